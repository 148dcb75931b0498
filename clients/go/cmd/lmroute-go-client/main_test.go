package main

import (
	"bytes"
	"context"
	"math"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"

	lmroutev1 "lmroute/clients/go/gen/lmroute/v1"
)

// fakeServer answers Route with an exploring decision and Feedback with no status at all (a broken server).
type fakeServer struct {
	lmroutev1.UnimplementedRouterServiceServer
}

func (fakeServer) Route(context.Context, *lmroutev1.RouteRequest) (*lmroutev1.RouteResponse, error) {
	return &lmroutev1.RouteResponse{ChosenModel: "weak", Tier: lmroutev1.Tier_TIER_WEAK, Score: 0.75, Threshold: 0.5,
		Router: "mf", DecisionId: strings.Repeat("a", 32), Propensity: 0.25}, nil
}

func (fakeServer) Feedback(context.Context, *lmroutev1.FeedbackRequest) (*lmroutev1.FeedbackResponse, error) {
	return &lmroutev1.FeedbackResponse{}, nil
}

func serveFake(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	lmroutev1.RegisterRouterServiceServer(g, fakeServer{})
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func TestRoutePrintsThePropensity(t *testing.T) {
	var out, errOut bytes.Buffer
	if rc := run([]string{"route", "--addr", serveFake(t), "--threshold", "0.5", "hi"}, &out, &errOut); rc != 0 {
		t.Fatalf("route: exit %d: %s", rc, errOut.String())
	}
	if !strings.Contains(out.String(), " propensity=0.250000 ") {
		t.Fatalf("route printed %q, without the decision's propensity", out.String())
	}
}

func TestFeedbackWithNoStatusFromTheServerFailsNamingIt(t *testing.T) {
	var out, errOut bytes.Buffer
	rc := run([]string{"feedback", "--addr", serveFake(t), "--attempts", "1", "--decision-id", "x", "--quality", "1"}, &out, &errOut)
	if rc != 1 || !strings.Contains(errOut.String(), "the server answered 0 statuses for the 1 outcome sent") {
		t.Fatalf("feedback: exit %d, stderr %q (it indexed results[0] and panicked)", rc, errOut.String())
	}
}

func TestConformanceOutputWritesNaNAsThePythonRunnerDoes(t *testing.T) {
	results := []map[string]any{
		{"id": "r", "code": "OK", "score": math.NaN(), "threshold": math.Inf(1), "x": math.Inf(-1), "y": 0.1},
		{"id": "s", "results": []itemResult{{Index: 1, Scores: map[string]float64{"mf": math.NaN(), "bert": 0.5}}}},
		{"id": "l", "routers": []string(nil), "n": int32(3), "ok": true, "reason": "<a>"},
	}
	got, err := pyJSON(map[string]any{"results": results})
	if err != nil {
		t.Fatalf("a NaN fails the output: %v", err)
	}
	want := `{"results":[{"code":"OK","id":"r","score":NaN,"threshold":Infinity,"x":-Infinity,"y":0.1},` +
		`{"id":"s","results":[{"index":1,"item_code":0,"item_reason":"","n_tokens":0,"truncated":false,"scores":{"bert":0.5,"mf":NaN}}]},` +
		`{"id":"l","n":3,"ok":true,"reason":"\u003ca\u003e","routers":[]}]}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
