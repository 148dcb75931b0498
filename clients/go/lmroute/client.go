// Package lmroute is a Go client of the lmroute router service (lmroute.v1.RouterService, and the
// target and bundle calls of lmroute.v1.AdminService).
//
//	c, err := lmroute.New("127.0.0.1:50051", lmroute.Options{})
//	defer c.Close()
//	d, err := c.Route(ctx, lmroute.RouteRequest("Prove Fermat's little theorem", "mf", lmroute.StrongShare(0.3)))
//	d.GetChosenModel()
//
// Every call has a deadline: the context's, or Options.Timeout when the context has none. Calls that fail
// with RESOURCE_EXHAUSTED or UNAVAILABLE are retried under Options.Retry (see RetryPolicy); all other
// errors are returned as gRPC status errors: use status.Code(err) and Reason(err).
package lmroute

import (
	"context"
	"crypto/tls"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	lmroutev1 "lmroute/clients/go/gen/lmroute/v1"
)

// Options configure a Client. The zero value is usable: 10 s timeout, DefaultRetryPolicy, plaintext, no
// token.
type Options struct {
	// Timeout is the deadline of a call (all its attempts together) whose context has none; 0 means 10 s.
	Timeout time.Duration
	// Retry is the retry policy; the zero value means DefaultRetryPolicy, NoRetry turns retries off.
	Retry RetryPolicy
	// DialOptions are passed to grpc.NewClient. Without transport credentials among them the connection
	// is plaintext (insecure), as for a sidecar or a trusted network.
	DialOptions []grpc.DialOption
	// WithTLS marks DialOptions as carrying transport credentials, so no insecure ones are added.
	WithTLS bool
	// TLS, when set, connects over TLS with this configuration (RootCAs: the server's CA; Certificates:
	// a client certificate for mTLS); it implies WithTLS.
	TLS *tls.Config
	// Token, when set, is sent as "authorization: Bearer <Token>" with every call.
	Token string
	// Tenant, when set, is named in every call's "x-lmroute-tenant" metadata: the tenant whose share
	// target, spend target and turn in the server's queue the calls count against (a token bound to a
	// tenant decides instead).
	Tenant string
}

// callMetadata adds the token and the tenant to every call's metadata.
type callMetadata struct{ token, tenant string }

func (m callMetadata) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	md := map[string]string{}
	if m.token != "" {
		md["authorization"] = "Bearer " + m.token
	}
	if m.tenant != "" {
		md["x-lmroute-tenant"] = m.tenant
	}
	return md, nil
}

// RequireTransportSecurity is false so that a token also works on a plaintext loopback connection.
func (m callMetadata) RequireTransportSecurity() bool { return false }

// Client calls one lmroute server over one connection; it is safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	router  lmroutev1.RouterServiceClient
	admin   lmroutev1.AdminServiceClient
	health  healthpb.HealthClient
	timeout time.Duration
	retry   retrier

	closeOnce sync.Once

	limitsMu sync.Mutex
	limits   *lmroutev1.CallLimits // the server's, from its first ListRouters answer (Limits)
}

// New connects lazily to target ("host:port", or any gRPC target name).
func New(target string, opts Options) (*Client, error) {
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("lmroute: Options.Timeout must be >= 0 (got %s)", opts.Timeout)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Retry == (RetryPolicy{}) {
		opts.Retry = DefaultRetryPolicy
	}
	if err := opts.Retry.Validate(); err != nil {
		return nil, err
	}
	if err := checkMetadata(opts); err != nil {
		return nil, err
	}
	dial := append([]grpc.DialOption{}, opts.DialOptions...)
	switch {
	case opts.TLS != nil:
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(opts.TLS)))
	case !opts.WithTLS:
		dial = append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if opts.Token != "" || opts.Tenant != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(callMetadata{opts.Token, opts.Tenant}))
	}
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("lmroute: connect to %q: %w", target, err)
	}
	return &Client{
		conn:    conn,
		router:  lmroutev1.NewRouterServiceClient(conn),
		admin:   lmroutev1.NewAdminServiceClient(conn),
		health:  healthpb.NewHealthClient(conn),
		timeout: opts.Timeout,
		retry:   newRetrier(opts.Retry),
	}, nil
}

// checkMetadata refuses a Tenant or Token that gRPC cannot send as metadata (printable ASCII only): else
// every call fails INTERNAL with a header error that names neither. The message names the field and the
// place of the first bad character, never the token itself.
func checkMetadata(opts Options) error {
	for _, f := range []struct{ name, value string }{{"Tenant", opts.Tenant}, {"Token", opts.Token}} {
		n := 0
		for _, r := range f.value {
			n++
			if r < 0x20 || r > 0x7e {
				return fmt.Errorf("lmroute: Options.%s: only printable ASCII may be sent (character %d is not)", f.name, n)
			}
		}
	}
	return nil
}

// Close closes the connection. It is idempotent: a second call does nothing and returns nil (the first
// call's error, if any, was returned by the first call).
func (c *Client) Close() error {
	err := error(nil)
	c.closeOnce.Do(func() { err = c.conn.Close() })
	return err
}

// call runs one RPC with the call's deadline and the retry policy.
func call[T any](c *Client, ctx context.Context, rpc func(context.Context) (T, error)) (T, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var out T
	err := c.retry.do(ctx, func(ctx context.Context) error {
		var err error
		out, err = rpc(ctx)
		return err
	})
	return out, err
}

// Score scores every prompt of req with each of its routers (all loaded routers when none are named).
// A bad prompt fails alone: see each result's Status (code 0 = OK).
func (c *Client) Score(ctx context.Context, req *lmroutev1.ScoreRequest) (*lmroutev1.ScoreResponse, error) {
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.ScoreResponse, error) { return c.router.Score(ctx, req) })
}

// Route decides which model of the default pair answers req's prompt.
func (c *Client) Route(ctx context.Context, req *lmroutev1.RouteRequest) (*lmroutev1.RouteResponse, error) {
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.RouteResponse, error) { return c.router.Route(ctx, req) })
}

// ListRouters describes what the server has loaded: routers, models, encoder, bundle version.
func (c *Client) ListRouters(ctx context.Context) (*lmroutev1.ListRoutersResponse, error) {
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.ListRoutersResponse, error) {
		return c.router.ListRouters(ctx, &lmroutev1.ListRoutersRequest{})
	})
}

// GetRouter describes one router (its kind, models, calibration) and the serving bundle's version;
// NOT_FOUND (reason ROUTER_NOT_FOUND) when no router has that name.
func (c *Client) GetRouter(ctx context.Context, name string) (*lmroutev1.GetRouterResponse, error) {
	req := &lmroutev1.GetRouterRequest{Name: name}
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.GetRouterResponse, error) {
		return c.router.GetRouter(ctx, req)
	})
}

// Feedback reports outcomes of earlier decisions (by decision id) or of prompts, up to the server's
// max_feedback_items per call. Each outcome gets its own status in the response (code 0 = stored, or
// reason DUPLICATE: stored before with the same value), in order; a retried call stores nothing twice.
// The server records the caller's tenant as the outcomes' reporter.
func (c *Client) Feedback(ctx context.Context, outcomes ...*lmroutev1.OutcomeReport) (*lmroutev1.FeedbackResponse, error) {
	req := &lmroutev1.FeedbackRequest{Outcomes: outcomes}
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.FeedbackResponse, error) { return c.router.Feedback(ctx, req) })
}

// SetTargets changes tenants' targets on the running server (AdminService; a token bound to a tenant is
// refused): shares maps a tenant to its strong-share target, spends to its spend in USD per 1,000
// requests, nil to remove the target. Every change is checked first and all are applied, or none. The
// response lists the targets held after.
func (c *Client) SetTargets(ctx context.Context, shares, spends map[string]*float64) (*lmroutev1.SetTargetsResponse, error) {
	req := SetTargetsRequest(shares, spends)
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.SetTargetsResponse, error) { return c.admin.SetTargets(ctx, req) })
}

// GetBundle says which bundle the server serves, since when, its routers and the swaps so far
// (AdminService).
func (c *Client) GetBundle(ctx context.Context) (*lmroutev1.GetBundleResponse, error) {
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.GetBundleResponse, error) {
		return c.admin.GetBundle(ctx, &lmroutev1.GetBundleRequest{})
	})
}

// ReloadBundle hot-swaps the server's bundle for the one at path on the server ("" = its serving path
// again, e.g. a flipped symlink) without a failed call (AdminService). FAILED_PRECONDITION when the
// candidate is refused: the old bundle keeps serving.
func (c *Client) ReloadBundle(ctx context.Context, path string) (*lmroutev1.ReloadBundleResponse, error) {
	req := &lmroutev1.ReloadBundleRequest{Path: path}
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.ReloadBundleResponse, error) {
		return c.admin.ReloadBundle(ctx, req)
	})
}

// ListShareTargets lists the tenants' strong-share targets and, per tenant and router, what their
// controllers realise (AdminService).
func (c *Client) ListShareTargets(ctx context.Context) (*lmroutev1.ListShareTargetsResponse, error) {
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.ListShareTargetsResponse, error) {
		return c.admin.ListShareTargets(ctx, &lmroutev1.ListShareTargetsRequest{})
	})
}

// ListSpendTargets lists the tenants' spend targets and, per tenant and router, what their controllers
// realise (AdminService).
func (c *Client) ListSpendTargets(ctx context.Context) (*lmroutev1.ListSpendTargetsResponse, error) {
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.ListSpendTargetsResponse, error) {
		return c.admin.ListSpendTargets(ctx, &lmroutev1.ListSpendTargetsRequest{})
	})
}

// DecisionsToJudge picks, from the server's outcome store, up to req.Budget of its latest req.Window
// (0: 500) unjudged decisions made at or after req.SinceMs most worth judging with both models of the
// serving bundle's pair (AdminService; FAILED_PRECONDITION without a store). Pass the answer's
// NextSinceMs as the next call's SinceMs.
func (c *Client) DecisionsToJudge(ctx context.Context, req *lmroutev1.DecisionsToJudgeRequest) (*lmroutev1.DecisionsToJudgeResponse, error) {
	return call(c, ctx, func(ctx context.Context) (*lmroutev1.DecisionsToJudgeResponse, error) {
		return c.admin.DecisionsToJudge(ctx, req)
	})
}

// Health is the grpc.health.v1 status of service ("" = the whole server, or "lmroute.v1.RouterService").
// NOT_SERVING until the server's bundle is loaded and warmed. Health is not retried.
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	resp, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return resp.GetStatus(), nil
}

// Text is a plain-text prompt.
func Text(text string) *lmroutev1.Prompt {
	return &lmroutev1.Prompt{Input: &lmroutev1.Prompt_Text{Text: text}}
}

// ScoreRequest asks for the scores of texts under routers (none = every loaded router).
func ScoreRequest(texts []string, routers ...string) *lmroutev1.ScoreRequest {
	req := &lmroutev1.ScoreRequest{Routers: routers}
	for _, t := range texts {
		req.Prompts = append(req.Prompts, Text(t))
	}
	return req
}

// Threshold routes to the strong model when the score is >= t (t in [0, 1]).
func Threshold(t float64) *lmroutev1.RouteRequest_Threshold {
	return &lmroutev1.RouteRequest_Threshold{Threshold: t}
}

// StrongShare routes about share (in [0, 1]) of typical traffic to the strong model, through the bundle's
// calibration table.
func StrongShare(share float64) *lmroutev1.RouteRequest_StrongShare {
	return &lmroutev1.RouteRequest_StrongShare{StrongShare: share}
}

// RoutePolicy is Threshold(t) or StrongShare(s).
type RoutePolicy interface {
	*lmroutev1.RouteRequest_Threshold | *lmroutev1.RouteRequest_StrongShare
}

// RouteRequest asks which model should answer text, with router and policy.
func RouteRequest[P RoutePolicy](text, router string, policy P) *lmroutev1.RouteRequest {
	req := &lmroutev1.RouteRequest{Prompt: Text(text), Router: router}
	switch p := any(policy).(type) {
	case *lmroutev1.RouteRequest_Threshold:
		req.Policy = p
	case *lmroutev1.RouteRequest_StrongShare:
		req.Policy = p
	}
	return req
}

// CostWeight chooses, among candidates, the model maximising predicted quality - w x the cost of 1,000
// such requests in USD (w >= 0; 0 = the best predicted whatever its price).
func CostWeight(w float64) *lmroutev1.ModelPolicy {
	return &lmroutev1.ModelPolicy{Rule: &lmroutev1.ModelPolicy_CostWeight{CostWeight: w}}
}

// QualityMargin chooses the cheapest candidate predicted within m (in [0, 1]) of the best predicted one.
func QualityMargin(m float64) *lmroutev1.ModelPolicy {
	return &lmroutev1.ModelPolicy{Rule: &lmroutev1.ModelPolicy_QualityMargin{QualityMargin: m}}
}

// QualityFloor chooses the cheapest candidate predicted at or above quality q (in [0, 1]), else the best
// predicted one.
func QualityFloor(q float64) *lmroutev1.ModelPolicy {
	return &lmroutev1.ModelPolicy{Rule: &lmroutev1.ModelPolicy_QualityFloor{QualityFloor: q}}
}

// RouteAmongRequest asks which of models (at least two, each priced by the server's models file) should
// answer text, chosen by rule (CostWeight, QualityMargin, QualityFloor; nil: the caller's tenant's spend
// target, held live by the server) with router ("" = the bundle's default quality router). The answer's
// Chosen and RunnerUp give the predicted quality and expected cost.
func RouteAmongRequest(text, router string, models []string, rule *lmroutev1.ModelPolicy) *lmroutev1.RouteRequest {
	req := &lmroutev1.RouteRequest{Prompt: Text(text), Router: router}
	for _, m := range models {
		req.Candidates = append(req.Candidates, &lmroutev1.Candidate{Model: m})
	}
	if rule != nil {
		req.Policy = &lmroutev1.RouteRequest_ModelPolicy{ModelPolicy: rule}
	}
	return req
}

// SingleOutcome is the quality in [0, 1] of the model that answered decision decisionID (a Route
// decision's chosen model), judged by source ("thumbs", "judge:gpt-4", ...).
func SingleOutcome(decisionID string, quality float64, source string) *lmroutev1.OutcomeReport {
	return &lmroutev1.OutcomeReport{
		Target:  &lmroutev1.OutcomeReport_DecisionId{DecisionId: decisionID},
		Outcome: &lmroutev1.OutcomeReport_Single{Single: &lmroutev1.SingleOutcome{Quality: quality}},
		Source:  source,
	}
}

// PairedOutcome is both models of the default pair judged on decision decisionID's prompt: the strong
// and the weak model's qualities in [0, 1].
func PairedOutcome(decisionID string, strong, weak float64, source string) *lmroutev1.OutcomeReport {
	return &lmroutev1.OutcomeReport{
		Target: &lmroutev1.OutcomeReport_DecisionId{DecisionId: decisionID},
		Outcome: &lmroutev1.OutcomeReport_Paired{
			Paired: &lmroutev1.PairedOutcome{StrongQuality: strong, WeakQuality: weak},
		},
		Source: source,
	}
}

// Target is a pointer to v, for SetTargets' maps (nil there removes a target).
func Target(v float64) *float64 { return &v }

// SetTargetsRequest is the request of SetTargets: strong-share changes, then spend changes, each by
// tenant name in sorted order.
func SetTargetsRequest(shares, spends map[string]*float64) *lmroutev1.SetTargetsRequest {
	req := &lmroutev1.SetTargetsRequest{}
	for _, tenant := range sortedKeys(shares) {
		ch := &lmroutev1.TargetChange{Tenant: tenant, Change: &lmroutev1.TargetChange_RemoveStrongShare{RemoveStrongShare: true}}
		if v := shares[tenant]; v != nil {
			ch.Change = &lmroutev1.TargetChange_StrongShare{StrongShare: *v}
		}
		req.Changes = append(req.Changes, ch)
	}
	for _, tenant := range sortedKeys(spends) {
		ch := &lmroutev1.TargetChange{Tenant: tenant, Change: &lmroutev1.TargetChange_RemoveSpend{RemoveSpend: true}}
		if v := spends[tenant]; v != nil {
			ch.Change = &lmroutev1.TargetChange_SpendPer_1KUsd{SpendPer_1KUsd: *v}
		}
		req.Changes = append(req.Changes, ch)
	}
	return req
}

func sortedKeys(m map[string]*float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
