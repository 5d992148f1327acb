import Testing
@Test func bridgePlaceholder() { #expect(Bool(true)) }
