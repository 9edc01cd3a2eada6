// crd-check validates rendered ServiceMonitor and PrometheusRule manifests
// offline. kubernetes-validate knows only the built-in Kubernetes kinds; the
// prometheus-operator CRD schemas are generated from the Go types of its
// pkg/apis/monitoring module, so decoding each manifest strictly into those
// types (unknown or mistyped fields are errors) checks the same structure
// the CRD schema does, plus the few required fields checked below.
//
// Usage: crd-check FILE...   (multi-document YAML; other kinds are ignored)
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: crd-check FILE...")
		os.Exit(2)
	}
	failed := false
	checked := 0
	for _, path := range os.Args[1:] {
		n, errs := checkFile(path)
		checked += n
		for _, err := range errs {
			failed = true
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
		}
	}
	if failed {
		os.Exit(1)
	}
	fmt.Printf("crd-check: %d ServiceMonitor/PrometheusRule manifests valid\n", checked)
}

func checkFile(path string) (int, []error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, []error{err}
	}
	reader := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var errs []error
	checked := 0
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return checked, append(errs, err)
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := sigsyaml.Unmarshal(doc, &head); err != nil {
			errs = append(errs, err)
			continue
		}
		if !strings.HasPrefix(head.APIVersion, "monitoring.coreos.com/") {
			continue
		}
		name := head.Kind + "/" + head.Metadata.Name
		if head.APIVersion != "monitoring.coreos.com/v1" {
			errs = append(errs, fmt.Errorf("%s: apiVersion %q, expected monitoring.coreos.com/v1", name, head.APIVersion))
			continue
		}
		checked++
		switch head.Kind {
		case "ServiceMonitor":
			var sm monitoringv1.ServiceMonitor
			if err := sigsyaml.UnmarshalStrict(doc, &sm); err != nil {
				errs = append(errs, fmt.Errorf("%s: %v", name, err))
				continue
			}
			errs = append(errs, checkServiceMonitor(name, &sm)...)
		case "PrometheusRule":
			var pr monitoringv1.PrometheusRule
			if err := sigsyaml.UnmarshalStrict(doc, &pr); err != nil {
				errs = append(errs, fmt.Errorf("%s: %v", name, err))
				continue
			}
			errs = append(errs, checkPrometheusRule(name, &pr)...)
		default:
			errs = append(errs, fmt.Errorf("%s: kind not checked by crd-check", name))
		}
	}
	return checked, errs
}

func checkServiceMonitor(name string, sm *monitoringv1.ServiceMonitor) []error {
	var errs []error
	if len(sm.Spec.Endpoints) == 0 {
		errs = append(errs, fmt.Errorf("%s: spec.endpoints is empty", name))
	}
	for i, ep := range sm.Spec.Endpoints {
		if ep.Port == "" && ep.TargetPort == nil {
			errs = append(errs, fmt.Errorf("%s: spec.endpoints[%d] names no port", name, i))
		}
	}
	if len(sm.Spec.Selector.MatchLabels) == 0 && len(sm.Spec.Selector.MatchExpressions) == 0 {
		errs = append(errs, fmt.Errorf("%s: spec.selector selects every Service", name))
	}
	return errs
}

func checkPrometheusRule(name string, pr *monitoringv1.PrometheusRule) []error {
	var errs []error
	if len(pr.Spec.Groups) == 0 {
		errs = append(errs, fmt.Errorf("%s: spec.groups is empty", name))
	}
	for _, g := range pr.Spec.Groups {
		if g.Name == "" {
			errs = append(errs, fmt.Errorf("%s: a group has no name", name))
		}
		for i, r := range g.Rules {
			where := fmt.Sprintf("%s: group %q rule %d", name, g.Name, i)
			if r.Expr.String() == "" {
				errs = append(errs, fmt.Errorf("%s: no expr", where))
			}
			if (r.Alert == "") == (r.Record == "") {
				errs = append(errs, fmt.Errorf("%s: needs exactly one of alert and record", where))
			}
		}
	}
	return errs
}
