// Wrapper module: builds jsonnet-hooks (main.go), a metacontroller webhook server evaluating jsonnet
// hooks with go-jsonnet, for `cargo xtask bench controller`. xtask builds it into the cache.
module jitsi-k8s.local/tools/jsonnet-hooks

go 1.26.0

require github.com/google/go-jsonnet v0.22.0

require (
	golang.org/x/crypto v0.45.0 // indirect
	golang.org/x/sys v0.38.0 // indirect
	sigs.k8s.io/yaml v1.4.0 // indirect
)
