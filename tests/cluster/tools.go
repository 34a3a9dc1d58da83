//go:build tools

// Package tools pins the commands the cluster test tier builds (kube-apiserver, etcd) so that
// `go mod tidy` keeps them, and their versions, in go.mod/go.sum.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
