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
func noVNCURL(base *url.URL, token string) string {
	u := *base
	q := u.Query()
	q.Set("path", q.Get("path")+"?token="+token)
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
