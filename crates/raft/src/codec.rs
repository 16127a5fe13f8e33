//! Binary codec for entries, messages and message batches (see docs/formats.md).
//! Being written; see issue 2.
