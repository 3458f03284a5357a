//! Unit tests of the edge's pieces.
