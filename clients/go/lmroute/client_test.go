package lmroute

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	lmroutev1 "lmroute/clients/go/gen/lmroute/v1"
)

// overloadedServer refuses the first `refusals` Route calls with RESOURCE_EXHAUSTED + RetryInfo, then
// answers; Score blocks until the caller's deadline.
type overloadedServer struct {
	lmroutev1.UnimplementedRouterServiceServer
	refusals int32
	calls    atomic.Int32
}

func (s *overloadedServer) Route(ctx context.Context, req *lmroutev1.RouteRequest) (*lmroutev1.RouteResponse, error) {
	if s.calls.Add(1) <= s.refusals {
		st, _ := status.New(codes.ResourceExhausted, "queue full").WithDetails(
			&errdetails.ErrorInfo{Reason: "QUEUE_FULL"}, &errdetails.RetryInfo{RetryDelay: durationpb.New(30 * time.Millisecond)})
		return nil, st.Err()
	}
	return &lmroutev1.RouteResponse{ChosenModel: "strong", Tier: lmroutev1.Tier_TIER_STRONG, Router: req.GetRouter(),
		Threshold: req.GetThreshold()}, nil
}

// GetRouter knows the router "mf" alone, as the server answers: NOT_FOUND ROUTER_NOT_FOUND otherwise.
func (s *overloadedServer) GetRouter(_ context.Context, req *lmroutev1.GetRouterRequest) (*lmroutev1.GetRouterResponse, error) {
	if req.GetName() != "mf" {
		st, _ := status.New(codes.NotFound, "no router "+req.GetName()).WithDetails(&errdetails.ErrorInfo{Reason: "ROUTER_NOT_FOUND"})
		return nil, st.Err()
	}
	return &lmroutev1.GetRouterResponse{Router: &lmroutev1.RouterInfo{Name: "mf", Kind: "mf", Models: []string{"strong", "weak"}},
		BundleVersion: "v1"}, nil
}

func (s *overloadedServer) Score(ctx context.Context, _ *lmroutev1.ScoreRequest) (*lmroutev1.ScoreResponse, error) {
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

func serve(t *testing.T, srv lmroutev1.RouterServiceServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	lmroutev1.RegisterRouterServiceServer(g, srv)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func TestClientRetriesOverloadOverRealGRPC(t *testing.T) {
	srv := &overloadedServer{refusals: 2}
	c, err := New(serve(t, srv), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	d, err := c.Route(context.Background(), RouteRequest("hi", "mf", Threshold(0.25)))
	if err != nil {
		t.Fatalf("Route after 2 refusals: %v", err)
	}
	if srv.calls.Load() != 3 || d.GetChosenModel() != "strong" || d.GetThreshold() != 0.25 {
		t.Fatalf("calls=%d resp=%v; want 3 calls and the answer", srv.calls.Load(), d)
	}
	if el := time.Since(start); el < 60*time.Millisecond {
		t.Errorf("took %s; two server-given 30ms retry delays must be waited", el)
	}
}

func TestClientWithoutRetriesSurfacesTheReason(t *testing.T) {
	srv := &overloadedServer{refusals: 1}
	c, err := New(serve(t, srv), Options{Retry: NoRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Route(context.Background(), RouteRequest("hi", "mf", StrongShare(0.5)))
	if status.Code(err) != codes.ResourceExhausted || Reason(err) != "QUEUE_FULL" || srv.calls.Load() != 1 {
		t.Fatalf("err=%v reason=%q calls=%d; want one RESOURCE_EXHAUSTED/QUEUE_FULL", err, Reason(err), srv.calls.Load())
	}
}

func TestOptionsTimeoutIsTheDefaultDeadline(t *testing.T) {
	c, err := New(serve(t, &overloadedServer{}), Options{Timeout: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Score(context.Background(), ScoreRequest([]string{"hi"}))
	if el := time.Since(start); status.Code(err) != codes.DeadlineExceeded || el > 5*time.Second || el < 150*time.Millisecond {
		t.Fatalf("err=%v after %s; want DEADLINE_EXCEEDED after ~150ms", err, el)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	if _, err := New("127.0.0.1:1", Options{Timeout: -time.Second}); err == nil {
		t.Error("negative Timeout accepted")
	}
	if _, err := New("127.0.0.1:1", Options{Retry: RetryPolicy{MaxAttempts: 2, Multiplier: 0.1}}); err == nil {
		t.Error("bad RetryPolicy accepted")
	}
}

// metadataServer answers Route with the caller's tenant and authorization metadata in ChosenModel.
type metadataServer struct {
	lmroutev1.UnimplementedRouterServiceServer
}

func (metadataServer) Route(ctx context.Context, _ *lmroutev1.RouteRequest) (*lmroutev1.RouteResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return &lmroutev1.RouteResponse{ChosenModel: strings.Join(md.Get("x-lmroute-tenant"), ",") + "|" +
		strings.Join(md.Get("authorization"), ",")}, nil
}

func TestTenantAndTokenRideOnEveryCall(t *testing.T) {
	addr := serve(t, metadataServer{})
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{}, "|"},
		{Options{Tenant: "batch"}, "batch|"},
		{Options{Token: "secret-token-0123456789", Tenant: "batch"}, "batch|Bearer secret-token-0123456789"},
	} {
		c, err := New(addr, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		d, err := c.Route(context.Background(), RouteRequest("hi", "mf", Threshold(0.5)))
		c.Close()
		if err != nil || d.GetChosenModel() != tc.want {
			t.Errorf("opts %+v: got %q, %v; want %q", tc.opts, d.GetChosenModel(), err, tc.want)
		}
	}
}

func TestSetTargetsRequestOrdersChangesAndRemovesNil(t *testing.T) {
	req := SetTargetsRequest(
		map[string]*float64{"trial": nil, "batch": Target(0.2)},
		map[string]*float64{"team": Target(4), "old": nil},
	)
	var got []string
	for _, ch := range req.GetChanges() {
		switch c := ch.GetChange().(type) {
		case *lmroutev1.TargetChange_StrongShare:
			got = append(got, ch.GetTenant()+" share "+strconv.FormatFloat(c.StrongShare, 'g', -1, 64))
		case *lmroutev1.TargetChange_RemoveStrongShare:
			got = append(got, ch.GetTenant()+" remove share")
		case *lmroutev1.TargetChange_SpendPer_1KUsd:
			got = append(got, ch.GetTenant()+" spend "+strconv.FormatFloat(c.SpendPer_1KUsd, 'g', -1, 64))
		case *lmroutev1.TargetChange_RemoveSpend:
			got = append(got, ch.GetTenant()+" remove spend")
		}
	}
	want := "batch share 0.2, trial remove share, old remove spend, team spend 4"
	if strings.Join(got, ", ") != want {
		t.Fatalf("changes: got %q, want %q", strings.Join(got, ", "), want)
	}
}

func TestOutcomeReportsTargetTheDecision(t *testing.T) {
	single := SingleOutcome("0123", 0.75, "thumbs")
	if single.GetDecisionId() != "0123" || single.GetSingle().GetQuality() != 0.75 || single.GetSource() != "thumbs" {
		t.Fatalf("single: %v", single)
	}
	paired := PairedOutcome("4567", 1, 0.25, "judge")
	if p := paired.GetPaired(); paired.GetDecisionId() != "4567" || p.GetStrongQuality() != 1 || p.GetWeakQuality() != 0.25 {
		t.Fatalf("paired: %v", paired)
	}
}

func TestRouteAmongRequestCarriesTheModelsAndOneRule(t *testing.T) {
	req := RouteAmongRequest("hi", "quality", []string{"a", "b"}, QualityMargin(0.05))
	if req.GetPrompt().GetText() != "hi" || req.GetRouter() != "quality" || len(req.GetCandidates()) != 2 ||
		req.GetCandidates()[1].GetModel() != "b" || req.GetModelPolicy().GetQualityMargin() != 0.05 {
		t.Fatalf("margin: %v", req)
	}
	if w := RouteAmongRequest("hi", "", []string{"a", "b"}, CostWeight(2)).GetModelPolicy(); w.GetCostWeight() != 2 {
		t.Fatalf("cost weight: %v", w)
	}
	if f := RouteAmongRequest("hi", "", []string{"a", "b"}, QualityFloor(0.8)).GetModelPolicy(); f.GetQualityFloor() != 0.8 {
		t.Fatalf("floor: %v", f)
	}
	if none := RouteAmongRequest("hi", "", []string{"a", "b"}, nil); none.GetPolicy() != nil {
		t.Fatalf("no rule (the tenant's spend target): %v", none.GetPolicy())
	}
}

func TestGetRouterDescribesOneRouter(t *testing.T) {
	c, err := New(serve(t, &overloadedServer{}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.GetRouter(context.Background(), "mf")
	if err != nil || r.GetRouter().GetName() != "mf" || r.GetRouter().GetKind() != "mf" || r.GetBundleVersion() != "v1" {
		t.Fatalf("GetRouter(mf) = %v, %v; want router mf of bundle v1", r, err)
	}
	_, err = c.GetRouter(context.Background(), "nope")
	if status.Code(err) != codes.NotFound || Reason(err) != "ROUTER_NOT_FOUND" {
		t.Fatalf("GetRouter(nope): %v (reason %q); want NOT_FOUND ROUTER_NOT_FOUND", err, Reason(err))
	}
}

func TestCloseTwiceReturnsNil(t *testing.T) {
	c, err := New(serve(t, &overloadedServer{}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v, want nil", err)
	}
}
