//! Golden vectors: fixed keys → exact bytes, for every entry and derivation.
