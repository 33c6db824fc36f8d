//go:build tools

// Package controlplane only pins the commands built by hack/build-controlplane.sh,
// so that `go mod tidy` keeps them (and everything they import) in go.mod/go.sum.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
