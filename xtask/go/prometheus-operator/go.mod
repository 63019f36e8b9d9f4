// Wrapper module: pins the Prometheus Operator whose CRDs (PodMonitor, ServiceMonitor, PrometheusRule)
// `cargo xtask cluster up` installs from this module's example/prometheus-operator-crd/ folder.
module jitsi-k8s.local/control-plane/prometheus-operator

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.85.0
