//! Hostile encodings: truncated, bit-flipped, oversized, trailing bytes.
