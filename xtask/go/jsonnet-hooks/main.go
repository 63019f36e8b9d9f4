// jsonnet-hooks serves metacontroller webhooks written in jsonnet, as metacontroller's jsonnetd does:
// `POST /<name>` evaluates `<dir>/<name>.jsonnet` (a function of `request`) with the request body as
// that argument and answers with the result. The evaluation is go-jsonnet's (the reference
// implementation of jsonnet in Go); our code here is HTTP only. For `cargo xtask bench controller`,
// which runs the design we replace (a metacontroller DecoratorController) beside service-per-pod.
//
// Usage: jsonnet-hooks --dir <hooks folder> --listen 127.0.0.1:<port>
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-jsonnet"
)

func main() {
	dir := flag.String("dir", ".", "folder of <name>.jsonnet hook files")
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	flag.Parse()

	ok := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }
	http.HandleFunc("/healthz", ok)
	http.HandleFunc("/readyz", ok)
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST a hook request", http.StatusMethodNotAllowed)
			return
		}
		name := strings.Trim(r.URL.Path, "/")
		if name == "" || strings.Contains(name, "/") || strings.HasPrefix(name, ".") {
			http.Error(w, "no such hook", http.StatusNotFound)
			return
		}
		source, err := os.ReadFile(filepath.Join(*dir, name+".jsonnet"))
		if err != nil {
			http.Error(w, "no such hook", http.StatusNotFound)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		vm := jsonnet.MakeVM()
		vm.TLACode("request", string(body))
		out, err := vm.EvaluateAnonymousSnippet(name+".jsonnet", string(source))
		if err != nil {
			log.Printf("hook %s: %v", name, err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, out)
	})
	log.Printf("serving the hooks of %s on %s", *dir, *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}
