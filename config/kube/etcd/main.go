// etcd: the etcd server, exactly as upstream's server/main.go, built from its Go module in a
// module of its own so that its dependencies do not move Kubernetes' (minimal version selection).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
