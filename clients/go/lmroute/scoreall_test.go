package lmroute

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	lmroutev1 "lmroute/clients/go/gen/lmroute/v1"
)

// limitedServer says its limits in ListRouters and enforces them in Score as lmroute-serve does: a call
// over max_prompts_per_request or max_request_chars is refused whole; an empty prompt fails alone. A
// prompt's score is its length / 1000, so a result shows which prompt it is of.
type limitedServer struct {
	lmroutev1.UnimplementedRouterServiceServer
	limits *lmroutev1.CallLimits

	mu     sync.Mutex
	listed int
	calls  [][]string // the texts of each Score call, in order
}

func (s *limitedServer) ListRouters(context.Context, *lmroutev1.ListRoutersRequest) (*lmroutev1.ListRoutersResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listed++
	return &lmroutev1.ListRoutersResponse{Limits: s.limits}, nil
}

func invalid(reason, msg string) error {
	st, _ := status.New(codes.InvalidArgument, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason})
	return st.Err()
}

func (s *limitedServer) Score(_ context.Context, req *lmroutev1.ScoreRequest) (*lmroutev1.ScoreResponse, error) {
	texts := make([]string, 0, len(req.GetPrompts()))
	chars := 0
	for _, p := range req.GetPrompts() {
		texts = append(texts, p.GetText())
		chars += len([]rune(p.GetText()))
	}
	s.mu.Lock()
	s.calls = append(s.calls, texts)
	s.mu.Unlock()
	if n := int64(len(texts)); n > s.limits.GetMaxPromptsPerRequest() {
		return nil, invalid("TOO_MANY_PROMPTS", fmt.Sprintf("prompts: %d prompts", n))
	}
	if int64(chars) > s.limits.GetMaxRequestChars() {
		return nil, invalid("REQUEST_TOO_LONG", fmt.Sprintf("prompts: %d characters in all", chars))
	}
	resp := &lmroutev1.ScoreResponse{BundleVersion: "v1"}
	for i, t := range texts {
		r := &lmroutev1.PromptScores{Index: int32(i), Status: &lmroutev1.ItemStatus{}}
		if t == "" {
			r.Status = &lmroutev1.ItemStatus{Code: 3, Reason: "EMPTY_PROMPT", Message: fmt.Sprintf("prompts[%d]: empty prompt", i)}
		} else {
			r.Scores = []*lmroutev1.RouterScore{{Router: "mf", StrongWinProbability: float64(len(t)) / 1000}}
		}
		resp.Results = append(resp.Results, r)
	}
	return resp, nil
}

func TestSplitCallsKeepsEachCallWithinEveryLimit(t *testing.T) {
	small := callLimits{prompts: 3, chars: 10, bytes: 100}
	for _, tc := range []struct {
		name  string
		lim   callLimits
		texts []string
		want  [][2]int
	}{
		{"prompts per call", small, []string{"a", "b", "c", "d", "e", "f", "g"}, [][2]int{{0, 3}, {3, 6}, {6, 7}}},
		{"characters per call", small, []string{"aaaa", "bbbb", "cccc", "d"}, [][2]int{{0, 2}, {2, 4}}},
		// 4 characters of 3 bytes each: 12 + 16 bytes a prompt, so the third passes 60 bytes ...
		{"bytes per call", callLimits{3, 100, 60}, []string{"量量量量", "量量量量", "量量量量"}, [][2]int{{0, 2}, {2, 3}}},
		// ... where 4 ASCII characters are 20 bytes: all three fit
		{"ASCII bytes", callLimits{3, 100, 60}, []string{"aaaa", "bbbb", "cccc"}, [][2]int{{0, 3}}},
		{"a prompt over a limit goes alone", small, []string{"a", strings.Repeat("x", 11), "b"}, [][2]int{{0, 1}, {1, 2}, {2, 3}}},
		{"no prompts, no call", small, nil, nil},
	} {
		if got := splitCalls(tc.texts, tc.lim); fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: splitCalls = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestLimitsOfTakesTheServersOrItsDefaults(t *testing.T) {
	if got, want := limitsOf(&lmroutev1.CallLimits{}), (callLimits{128, 1_000_000, 3774873}); got != want {
		t.Errorf("no limits said: %+v, want the defaults %+v", got, want)
	}
	said := &lmroutev1.CallLimits{MaxPromptsPerRequest: 5, MaxRequestChars: 2000, MaxMessageBytes: 4096}
	if got, want := limitsOf(said), (callLimits{5, 2000, 3686}); got != want {
		t.Errorf("limits %v: %+v, want %+v", said, got, want)
	}
	big := &lmroutev1.CallLimits{MaxPromptsPerRequest: 1000, MaxMessageBytes: 64 << 20}
	if got := limitsOf(big); got.prompts != scoreBatch || got.bytes != 3774873 {
		t.Errorf("limits %v: %+v, want at most %d prompts and this client's message limit", big, got, scoreBatch)
	}
}

func TestScoreAllSplitsByTheServersLimitsAndKeepsTheOrder(t *testing.T) {
	srv := &limitedServer{limits: &lmroutev1.CallLimits{MaxPromptsPerRequest: 5, MaxRequestChars: 2000, MaxMessageBytes: 4096}}
	c, err := New(serve(t, srv), Options{Retry: NoRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	texts := make([]string, 12)
	for i := range texts {
		texts[i] = strings.Repeat("p", i+1)
	}
	texts[7] = "" // fails alone, named by its place in texts
	if _, err := c.Score(context.Background(), ScoreRequest(texts)); Reason(err) != "TOO_MANY_PROMPTS" {
		t.Fatalf("one Score call of 12 prompts: %v, want TOO_MANY_PROMPTS (else this test proves nothing)", err)
	}
	srv.calls = nil
	resp, err := c.ScoreAll(context.Background(), texts, "mf")
	if err != nil {
		t.Fatalf("ScoreAll: %v", err)
	}
	if got := fmt.Sprint(len(srv.calls[0]), len(srv.calls[1]), len(srv.calls[2])); len(srv.calls) != 3 || got != "5 5 2" {
		t.Fatalf("Score calls: %v, want 3 calls of 5, 5, 2 prompts", srv.calls)
	}
	if len(resp.GetResults()) != len(texts) || resp.GetBundleVersion() != "v1" {
		t.Fatalf("ScoreAll: %d results, bundle %q", len(resp.GetResults()), resp.GetBundleVersion())
	}
	for i, r := range resp.GetResults() {
		if r.GetIndex() != int32(i) {
			t.Errorf("results[%d].Index = %d", i, r.GetIndex())
		}
		if i == 7 {
			if st := r.GetStatus(); st.GetReason() != "EMPTY_PROMPT" || st.GetMessage() != "prompts[7]: empty prompt" {
				t.Errorf("results[7].Status = %v, want EMPTY_PROMPT named prompts[7]", st)
			}
			continue
		}
		if got := r.GetScores()[0].GetStrongWinProbability(); got != float64(i+1)/1000 {
			t.Errorf("results[%d]: score %g is not its prompt's (%g)", i, got, float64(i+1)/1000)
		}
	}
	if _, err := c.ScoreAll(context.Background(), texts[:2]); err != nil || srv.listed != 1 {
		t.Fatalf("a second ScoreAll: %v; ListRouters calls %d, want 1 (Limits asks once)", err, srv.listed)
	}
}

func TestScoreAllSplitsByCharactersAndEndsWithACallsError(t *testing.T) {
	srv := &limitedServer{limits: &lmroutev1.CallLimits{MaxPromptsPerRequest: 100, MaxRequestChars: 10}}
	c, err := New(serve(t, srv), Options{Retry: NoRetry})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.ScoreAll(context.Background(), []string{"aaaa", "bbbb", "cccc", "dd"})
	if err != nil || len(srv.calls) != 2 || len(resp.GetResults()) != 4 || resp.GetResults()[3].GetIndex() != 3 {
		t.Fatalf("ScoreAll: %v, calls %v, results %v", err, srv.calls, resp.GetResults())
	}
	// alone over max_request_chars: the server refuses its call, and ScoreAll says so (as the Python Controller)
	_, err = c.ScoreAll(context.Background(), []string{"a", strings.Repeat("x", 11), "b"})
	if status.Code(err) != codes.InvalidArgument || Reason(err) != "REQUEST_TOO_LONG" {
		t.Fatalf("a prompt alone over max_request_chars: %v, want INVALID_ARGUMENT REQUEST_TOO_LONG", err)
	}
	if resp, err := c.ScoreAll(context.Background(), nil); err != nil || len(resp.GetResults()) != 0 || len(srv.calls) != 4 {
		t.Fatalf("no texts: %v, %v; calls %d, want none made", resp, err, len(srv.calls))
	}
}

func TestNewRefusesATenantOrTokenGRPCCannotSend(t *testing.T) {
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Tenant: "a\nb"}, "lmroute: Options.Tenant: only printable ASCII may be sent (character 2 is not)"},
		{Options{Tenant: "café"}, "lmroute: Options.Tenant: only printable ASCII may be sent (character 4 is not)"},
		{Options{Token: "secret\x7fvalue"}, "lmroute: Options.Token: only printable ASCII may be sent (character 7 is not)"},
	} {
		_, err := New("127.0.0.1:1", tc.opts)
		if err == nil || err.Error() != tc.want {
			t.Errorf("New(%+v): %v, want %q", tc.opts, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("the error shows the token: %v", err)
		}
	}
	c, err := New("127.0.0.1:1", Options{Tenant: "batch-1", Token: "tok_en.0123~"})
	if err != nil {
		t.Fatalf("printable tenant and token: %v", err)
	}
	c.Close()
}
