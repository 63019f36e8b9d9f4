// Wrapper module: pins the Gateway API whose standard-channel CRDs (GatewayClass, Gateway, HTTPRoute,
// ReferenceGrant) `cargo xtask cluster up` installs from this module's config/crd/standard/ folder, so
// components/gateway-api is validated by the API server.
module jitsi-k8s.local/control-plane/gateway-api

go 1.26.0

require sigs.k8s.io/gateway-api v1.6.3
