//go:build tools

// containerd 2.x, its runc shim and ctr, built by config/kube/build.sh for the sandbox nodes'
// container runtime. This file only pins the commands in go.mod; build.sh builds them by path.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
