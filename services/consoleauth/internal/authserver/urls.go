package authserver

import (
	"fmt"
	"net/url"
)

// Console types served.
const (
	TypeNoVNC  = "novnc"
	TypeXVPVNC = "xvpvnc"
)

// ParseBaseURL checks a proxy base URL (novncproxy_base_url,
// xvpvncproxy_base_url): it must be an absolute http or https URL.
func ParseBaseURL(name, raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s %q: want an absolute http or https URL", name, raw)
	}
	return u, nil
}

// noVNCURL is Nova's novnc access URL: noVNC (>= 1.1) takes the token
// inside its `path` query parameter, so the URL carries
// path=%3Ftoken%3D{token}. Other query parameters of the base URL are kept;
// a `path` the base URL already has (e.g. "websockify") gets the token
// appended, so operators can still choose the WebSocket path.
//
// A view-only console's URL also carries view_only=1, outside `path`, which
// tells the console page to show "view only" and offer no input (noVNC's own
// pages ignore it). It is a hint for the page only: the proxy enforces
// view-only from the token, whatever the URL says.
func noVNCURL(base *url.URL, token string, viewOnly bool) string {
	u := *base
	q := u.Query()
	q.Set("path", q.Get("path")+"?token="+token)
	if viewOnly {
		q.Set("view_only", "1")
	} else {
		q.Del("view_only") // a base URL cannot make a normal console look view-only
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// xvpURL is Nova's xvpvnc access URL: {xvpvncproxy_base_url}?token={token},
// keeping the base URL's other query parameters.
func xvpURL(base *url.URL, token string) string {
	u := *base
	q := u.Query()
	q.Set("token", token)
	u.RawQuery = q.Encode()
	return u.String()
}
