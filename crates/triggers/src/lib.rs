//! Queue triggers of `ol` (docs/triggers.md): lambdas called once per
//! message of a NATS JetStream consumer, at least once.
