// The bridge library lives here.
