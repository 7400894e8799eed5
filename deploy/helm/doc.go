// Package helm renders vncgate's Helm chart (the vncgate folder beside this
// file) the way `helm template` does, with Helm's own library and no cluster,
// and checks every rendered object against the Kubernetes API schema: the
// OpenAPI v3 documents the k8s.io/kubernetes module ships
// (api/openapi-spec/v3), read by the apiserver's own machinery.
//
// The tests in this package are the chart's proof: every object of several
// value sets passes the schema, a broken object does not, and the chart
// agrees with the services it runs (probes, ports, grace periods, and
// configuration files each service's own loader accepts).
package helm
