package gateway

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Nova's compute API microversions (OpenStack's API-SIG microversion
// guideline). vncgate's console calls answer the same at every version from
// 2.1 to maxMinor; clients such as tempest and the openstack CLI require the
// version they asked for to come back in the answer.
const (
	minMinor = 1
	maxMinor = 100
)

// microversion negotiates the compute API version of each request: it reads
// "OpenStack-API-Version: compute 2.N" or the older
// "X-OpenStack-Nova-API-Version: 2.N" (2.1 when absent, "latest" for the
// newest), answers 406 for a version outside the range, and sets the version
// in both headers of the answer, as Nova does.
func microversion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		minor, err := requestedMinor(r.Header)
		h := w.Header()
		h.Add("Vary", "OpenStack-API-Version, X-OpenStack-Nova-API-Version")
		if err != nil {
			h.Set("OpenStack-API-Version", fmt.Sprintf("compute 2.%d", minMinor))
			h.Set("X-OpenStack-Nova-API-Version", fmt.Sprintf("2.%d", minMinor))
			writeFault(w, http.StatusNotAcceptable, err.Error())
			return
		}
		v := "2." + strconv.Itoa(minor)
		h.Set("OpenStack-API-Version", "compute "+v)
		h.Set("X-OpenStack-Nova-API-Version", v)
		next.ServeHTTP(w, r)
	})
}

// requestedMinor is the minor version a request asks for.
func requestedMinor(h http.Header) (int, error) {
	v := ""
	for _, line := range h.Values("OpenStack-API-Version") {
		for _, item := range strings.Split(line, ",") {
			if service, version, ok := strings.Cut(strings.TrimSpace(item), " "); ok && strings.EqualFold(service, "compute") {
				v = strings.TrimSpace(version)
			}
		}
	}
	if v == "" {
		v = strings.TrimSpace(h.Get("X-OpenStack-Nova-API-Version"))
	}
	switch strings.ToLower(v) {
	case "":
		return minMinor, nil
	case "latest":
		return maxMinor, nil
	}
	major, minor, ok := strings.Cut(v, ".")
	n, err := strconv.Atoi(minor)
	if !ok || major != "2" || err != nil || n < minMinor || n > maxMinor || len(minor) > 3 {
		return 0, fmt.Errorf("version %.20q is not supported by the API: minimum is 2.%d and maximum is 2.%d", v, minMinor, maxMinor)
	}
	return n, nil
}
