//go:build tools

// Package tools pins upstream Dapr's daprd and sentry, which the upstream-peer suites
// (tests/tests/upstream_peer.rs, tests/tests/upstream_sentry.rs) run beside ours, so that
// `go mod tidy` keeps them, and their version, in go.mod/go.sum. scripts/test.sh builds them
// unchanged from the published module: `go build -tags stablecomponents
// github.com/dapr/dapr/cmd/daprd` and `go build github.com/dapr/dapr/cmd/sentry`; ./sqlitenr is
// the same daprd with the sqlite name resolver registered.
package tools

import (
	_ "github.com/dapr/dapr/cmd/daprd"
	_ "github.com/dapr/dapr/cmd/sentry"
)
