package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// healthcheckUsage is the synopsis of `udpgate healthcheck`.
const healthcheckUsage = `usage: udpgate healthcheck [flags]   exit 0 if a udpgate process on this host is ready, 1 if not
  Asks GET /readyz (or -path /healthz) of the process's HTTP endpoint
  (UDPGATE_HTTP_LISTEN, or -url), for container health checks where there is
  no shell or curl (the image is distroless):
    healthcheck: {test: ["CMD", "/udpgate", "healthcheck"]}`

// maxHealthBody bounds what is read of an answer: /readyz says one line.
const maxHealthBody = 4 << 10

func newHealthcheckCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Args:  cobra.NoArgs,
		Short: "exit 0 if the udpgate process here is ready (/readyz), 1 if not: for container health checks",
		Long:  healthcheckUsage,
	}
	fs := cmd.Flags()
	baseURL := urlFlag(fs, "the process's")
	path := fs.String("path", "/readyz", "the endpoint to ask: /readyz (ready to serve) or /healthz (the process runs)")
	timeout := fs.Duration("timeout", 2*time.Second, "unhealthy if the process has not answered after this long")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *timeout <= 0 || !strings.HasPrefix(*path, "/") {
			return usageErrorf(cmd, "-timeout must be positive and -path start with /")
		}
		base, _, err := baseURL()
		if err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
		endpoint, err := healthEndpoint(base, *path)
		if err != nil {
			return err
		}
		line, err := checkHealth(cmd.Context(), endpoint, *timeout)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), line)
		return err
	}
	return cmd
}

// healthEndpoint returns base (an http:// or https:// URL; http:// when
// it has no scheme) with path appended.
func healthEndpoint(base, path string) (string, error) {
	raw := strings.TrimSpace(base)
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("healthcheck: -url %q is not an http:// URL like http://127.0.0.1:9780", base)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	return u.String(), nil
}

// checkHealth GETs endpoint within timeout and returns the first line of
// a 200 answer; any other outcome is an error that says why.
func checkHealth(ctx context.Context, endpoint string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return "", fmt.Errorf("healthcheck: %w", err)
	}
	// A probe of this host: no proxy from the environment, no connection
	// kept for later.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the method and URL, said below
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return "", fmt.Errorf("healthcheck: %s did not answer within %s", endpoint, timeout)
		}
		return "", fmt.Errorf("healthcheck: %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxHealthBody))
	line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("healthcheck: %s: %s: %.200s", endpoint, resp.Status, line)
	}
	return line, nil
}
