// Package proto is herd's vocabulary: the agent batch and closed window types, the NATS
// subjects they travel on, the partition scheme that spreads them over rollup workers, the
// token rules for service and version names, herd's shared sketch buckets, and the binary
// batch codec.
//
// It imports only the standard library and the sketch library, so every other package, and an
// agent in another language (see docs/wire-format.md), can depend on it.
package proto
