package lambda

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
)

// NewClient returns a Lambda client for a Bridge, configured by the
// standard AWS chain (environment, shared config and credentials files,
// SSO, web identity, container and instance roles): region, credentials
// and endpoint. The SDK itself honours AWS_ENDPOINT_URL_LAMBDA (and
// AWS_ENDPOINT_URL), for example for a local Lambda emulator; endpoint, if
// not empty, overrides both.
//
// The client does not retry: the Bridge retries throttles and 5xx itself,
// within each request's deadline. Its HTTP transport keeps up to 256 idle
// connections to the endpoint, so that a busy Bridge does not reconnect.
// It returns an error if no region is configured.
func NewClient(ctx context.Context, endpoint string) (*awslambda.Client, error) {
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConnsPerHost = 256
	})
	cfg, err := config.LoadDefaultConfig(ctx,
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
		config.WithHTTPClient(httpClient),
	)
	if err != nil {
		return nil, fmt.Errorf("lambda: load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("lambda: no AWS region: set AWS_REGION or a region in the AWS config file")
	}
	return awslambda.NewFromConfig(cfg, func(o *awslambda.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	}), nil
}
