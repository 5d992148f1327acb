// Shared CLI options and commands live here.
