// Package deliver acts on herd's final verdicts: it turns each decision (one decision_id, a
// UUID, the idempotency key everywhere) into deliveries to deploy tools — signed generic
// webhooks (Standard Webhooks), an Argo Rollouts abort, a Spinnaker webhook trigger — and
// answers Flagger's rollback and confirm-promotion hooks.
//
// Deliveries are retried on a fixed schedule inside herd's 10 s budget (0, 0.25, 0.5, 1, 2,
// 4 s, jittered), then with capped exponential backoff while the decision is marked
// escalated. Every attempt is a proto.Delivery row. Decisions and their per-target state
// live in a Store (JetStream KV or a directory of JSON files), so a restart resumes an
// unfinished delivery and never repeats a finished one; Spinnaker, which is not idempotent,
// is sent each decision at most once.
//
// The contracts seen by receivers are documented in docs/webhooks.md.
package deliver
