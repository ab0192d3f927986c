"""The optional key a receiver can demand before it accepts calls."""

KEY_HEADER = "x-opencode-share-key"
