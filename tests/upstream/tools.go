//go:build tools

// Package tools pins upstream Dapr's daprd, which the upstream-peer suite
// (tests/tests/upstream_peer.rs) runs beside ours, so that `go mod tidy` keeps it, and its
// version, in go.mod/go.sum. scripts/test.sh builds it unchanged from the published module:
// `go build -tags stablecomponents github.com/dapr/dapr/cmd/daprd`; ./sqlitenr is the same daprd
// with the sqlite name resolver registered.
package tools

import (
	_ "github.com/dapr/dapr/cmd/daprd"
)
