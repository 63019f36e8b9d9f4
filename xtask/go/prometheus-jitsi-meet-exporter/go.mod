// Wrapper module: the Go exporter operators run today, for `cargo xtask bench exporter` to measure
// side by side with ours. As of 2026-11-24 the Go module proxy answers 403 "This module version is
// not available" for this module (every version tried), so there is no go.sum yet and the benchmark
// reports the build error; it builds as soon as the proxy serves the module.
module jitsi-k8s.local/go-tools/prometheus-jitsi-meet-exporter

go 1.26.0

tool github.com/systemli/prometheus-jitsi-meet-exporter

require github.com/systemli/prometheus-jitsi-meet-exporter v1.5.0
