// Command daprd-sqlite is upstream Dapr's daprd (github.com/dapr/dapr/cmd/daprd, built with the
// `stablecomponents` tag) plus the `sqlite` name resolver, which upstream registers only in
// `allcomponents` builds (cmd/daprd/components/nameresolution_sqlite.go), a tag whose
// dependencies do not build with this Go. The registration is the same one line upstream's file
// has; tests/tests/upstream_peer.rs uses this binary for its shared-sqlite-file tests.
package main

import (
	"github.com/dapr/components-contrib/nameresolution/sqlite"
	"github.com/dapr/dapr/cmd/daprd/app"
	nrLoader "github.com/dapr/dapr/pkg/components/nameresolution"
)

func init() {
	nrLoader.DefaultRegistry.RegisterComponent(sqlite.NewResolver, "sqlite")
}

func main() {
	app.Run()
}
