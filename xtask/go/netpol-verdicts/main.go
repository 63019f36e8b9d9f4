// netpol-verdicts answers "would these NetworkPolicies let this traffic through?" with cyclonus's
// policy engine (github.com/mattfenwick/cyclonus, the Kubernetes SIG Network policy analyzer), for
// the manifests tests. Our code here is input and output only; every verdict is cyclonus's.
//
// stdin:  {"policies": [NetworkPolicy, ...], "traffic": [cyclonus matcher.Traffic, ...]}
// stdout: [{"ingress": bool, "egress": bool, "allowed": bool}, ...], one per traffic, in order.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/mattfenwick/cyclonus/pkg/matcher"
	networkingv1 "k8s.io/api/networking/v1"
)

type request struct {
	Policies []*networkingv1.NetworkPolicy `json:"policies"`
	Traffic  []*matcher.Traffic            `json:"traffic"`
}

type verdict struct {
	Ingress bool `json:"ingress"`
	Egress  bool `json:"egress"`
	Allowed bool `json:"allowed"`
}

func main() {
	var req request
	decoder := json.NewDecoder(os.Stdin)
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&req); err != nil {
		fmt.Fprintf(os.Stderr, "netpol-verdicts: reading the request from stdin: %v\n", err)
		os.Exit(2)
	}
	policy := matcher.BuildNetworkPolicies(false, req.Policies)
	verdicts := make([]verdict, 0, len(req.Traffic))
	for i, traffic := range req.Traffic {
		if traffic == nil || traffic.Source == nil || traffic.Destination == nil {
			fmt.Fprintf(os.Stderr, "netpol-verdicts: traffic %d has no Source or Destination\n", i)
			os.Exit(2)
		}
		result := policy.IsTrafficAllowed(traffic)
		verdicts = append(verdicts, verdict{
			Ingress: result.Ingress.IsAllowed(),
			Egress:  result.Egress.IsAllowed(),
			Allowed: result.IsAllowed(),
		})
	}
	if err := json.NewEncoder(os.Stdout).Encode(verdicts); err != nil {
		fmt.Fprintf(os.Stderr, "netpol-verdicts: writing the verdicts: %v\n", err)
		os.Exit(1)
	}
}
