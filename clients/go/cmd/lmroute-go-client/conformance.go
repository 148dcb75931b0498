package main

// The conformance mode of clients/CONFORMANCE.md: run every case of a cases file against one server with
// retries off and print one JSON object {"results": [...]} on stdout.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	lmroutev1 "lmroute/clients/go/gen/lmroute/v1"
	"lmroute/clients/go/lmroute"
)

const defaultCaseTimeoutMs = 30000

// conformanceCase is one entry of cases.json.
type conformanceCase struct {
	ID          string   `json:"id"`
	RPC         string   `json:"rpc"`
	Prompts     []string `json:"prompts"`
	Routers     []string `json:"routers"`
	Prompt      *string  `json:"prompt"`
	Router      string   `json:"router"`
	Threshold   *float64 `json:"threshold"`
	StrongShare *float64 `json:"strong_share"`
	// Route among candidates: the models, and at most one ModelPolicy rule (none: the tenant's spend target).
	Candidates    []string `json:"candidates"`
	CostWeight    *float64 `json:"cost_weight"`
	QualityMargin *float64 `json:"quality_margin"`
	QualityFloor  *float64 `json:"quality_floor"`
	Service       string   `json:"service"`
	TimeoutMs     *int64   `json:"timeout_ms"`
	// Feedback: the outcomes; "routed" as a decision_id names the decision of the case's own Route call
	// (made first when the case has a prompt).
	Outcomes []conformanceOutcome `json:"outcomes"`
	// SetTargets: tenant -> new target, null to remove it.
	Shares map[string]*float64 `json:"shares"`
	Spends map[string]*float64 `json:"spends"`
	// ReloadBundle: the bundle directory on the server ("" = its serving path).
	Path string `json:"path"`
	// DecisionsToJudge: how many to pick, among how many (0: the server's 500), made since when.
	Budget  int32 `json:"budget"`
	Window  int32 `json:"window"`
	SinceMs int64 `json:"since_ms"`
}

// conformanceOutcome is one outcome of a Feedback case: single (a quality) or paired ([strong, weak]).
type conformanceOutcome struct {
	DecisionID string      `json:"decision_id"`
	Single     *float64    `json:"single"`
	Paired     *[2]float64 `json:"paired"`
	Source     string      `json:"source"`
}

const routedDecision = "routed"

var knownRPCs = map[string]bool{
	"Score": true, "ScoreAll": true, "Route": true, "Health": true, "ListRouters": true,
	"Feedback": true, "SetTargets": true, "ListShareTargets": true, "ListSpendTargets": true,
	"GetBundle": true, "ReloadBundle": true, "DecisionsToJudge": true,
}

type itemResult struct {
	Index      int32              `json:"index"`
	ItemCode   int32              `json:"item_code"`
	ItemReason string             `json:"item_reason"`
	NTokens    int32              `json:"n_tokens"`
	Truncated  bool               `json:"truncated"`
	Scores     map[string]float64 `json:"scores"`
}

func conformanceCmd(args []string, stdout, stderr io.Writer) error {
	fs, com := newFlags("conformance", stderr)
	casesPath := fs.String("cases", "", "cases file (JSON, see clients/CONFORMANCE.md)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *casesPath == "" || fs.NArg() != 0 {
		return fmt.Errorf("%w: need --cases FILE and no other argument", errUsage)
	}
	cases, err := readCases(*casesPath)
	if err != nil {
		return err
	}
	opts, err := com.options(lmroute.Options{Timeout: time.Duration(defaultCaseTimeoutMs) * time.Millisecond, Retry: lmroute.NoRetry})
	if err != nil {
		return err
	}
	c, err := lmroute.New(com.addr, opts)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	defer c.Close()
	results := make([]map[string]any, 0, len(cases))
	for _, cs := range cases {
		results = append(results, runCase(c, cs))
	}
	doc, err := pyJSON(map[string]any{"results": results})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", doc)
	return err
}

// readCases reads and checks the cases file; every problem is a usage error (exit 2).
func readCases(path string) ([]conformanceCase, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot read cases file: %v", errUsage, err)
	}
	var file struct {
		Cases []conformanceCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		return nil, fmt.Errorf("%w: %s: not a cases file: %v", errUsage, path, err)
	}
	for i, cs := range file.Cases {
		switch {
		case cs.ID == "":
			return nil, fmt.Errorf("%w: %s: cases[%d]: missing id", errUsage, path, i)
		case !knownRPCs[cs.RPC]:
			return nil, fmt.Errorf("%w: %s: cases[%d] (%s): unknown rpc %q", errUsage, path, i, cs.ID, cs.RPC)
		case cs.Threshold != nil && cs.StrongShare != nil:
			return nil, fmt.Errorf("%w: %s: cases[%d] (%s): threshold and strong_share both set", errUsage, path, i, cs.ID)
		case countSet(cs.CostWeight, cs.QualityMargin, cs.QualityFloor) > 1:
			return nil, fmt.Errorf("%w: %s: cases[%d] (%s): more than one of cost_weight, quality_margin, quality_floor", errUsage, path, i, cs.ID)
		case cs.TimeoutMs != nil && *cs.TimeoutMs <= 0:
			return nil, fmt.Errorf("%w: %s: cases[%d] (%s): timeout_ms must be > 0", errUsage, path, i, cs.ID)
		}
		for j, o := range cs.Outcomes {
			if (o.Single == nil) == (o.Paired == nil) {
				return nil, fmt.Errorf("%w: %s: cases[%d] (%s): outcomes[%d]: give one of single and paired", errUsage, path, i, cs.ID, j)
			}
		}
	}
	return file.Cases, nil
}

// runCase makes the case's call; a gRPC error is a result ({"code", "reason"}), not a failure.
func runCase(c *lmroute.Client, cs conformanceCase) map[string]any {
	timeout := int64(defaultCaseTimeoutMs)
	if cs.TimeoutMs != nil {
		timeout = *cs.TimeoutMs
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeout)*time.Millisecond)
	defer cancel()
	out := map[string]any{"id": cs.ID}
	var err error
	switch cs.RPC {
	case "Score", "ScoreAll":
		err = runScore(ctx, c, cs, out)
	case "Route":
		err = runRoute(ctx, c, cs, out)
	case "Health":
		var st fmt.Stringer
		st, err = c.Health(ctx, cs.Service)
		out["status"] = st.String()
	case "ListRouters":
		err = runList(ctx, c, out)
	case "Feedback":
		err = runFeedback(ctx, c, cs, out)
	case "SetTargets":
		var resp *lmroutev1.SetTargetsResponse
		if resp, err = c.SetTargets(ctx, cs.Shares, cs.Spends); err == nil {
			out["share_targets"], out["spend_targets"] = shareMap(resp.GetShareTargets()), spendMap(resp.GetSpendTargets())
		}
	case "ListShareTargets":
		var resp *lmroutev1.ListShareTargetsResponse
		if resp, err = c.ListShareTargets(ctx); err == nil {
			out["targets"] = shareMap(resp.GetTargets())
		}
	case "GetBundle":
		var resp *lmroutev1.GetBundleResponse
		if resp, err = c.GetBundle(ctx); err == nil {
			out["bundle_version"], out["routers"] = resp.GetBundleVersion(), resp.GetRouters()
		}
	case "ReloadBundle":
		var resp *lmroutev1.ReloadBundleResponse
		if resp, err = c.ReloadBundle(ctx, cs.Path); err == nil {
			out["bundle_version"], out["previous_version"] = resp.GetBundleVersion(), resp.GetPreviousVersion()
		}
	case "ListSpendTargets":
		var resp *lmroutev1.ListSpendTargetsResponse
		if resp, err = c.ListSpendTargets(ctx); err == nil {
			out["targets"] = spendMap(resp.GetTargets())
		}
	case "DecisionsToJudge":
		err = runToJudge(ctx, c, cs, out)
	}
	if err != nil {
		return map[string]any{"id": cs.ID, "code": codeName(status.Code(err)), "reason": lmroute.Reason(err)}
	}
	out["code"] = "OK"
	return out
}

// runScore makes a Score call, or for ScoreAll as many as the server's limits need (Client.ScoreAll).
func runScore(ctx context.Context, c *lmroute.Client, cs conformanceCase, out map[string]any) error {
	var resp *lmroutev1.ScoreResponse
	var err error
	if cs.RPC == "ScoreAll" {
		resp, err = c.ScoreAll(ctx, cs.Prompts, cs.Routers...)
	} else {
		resp, err = c.Score(ctx, lmroute.ScoreRequest(cs.Prompts, cs.Routers...))
	}
	if err != nil {
		return err
	}
	items := make([]itemResult, 0, len(resp.GetResults()))
	for _, r := range resp.GetResults() {
		scores := make(map[string]float64, len(r.GetScores()))
		for _, s := range r.GetScores() {
			scores[s.GetRouter()] = s.GetStrongWinProbability()
		}
		items = append(items, itemResult{
			Index: r.GetIndex(), ItemCode: r.GetStatus().GetCode(), ItemReason: r.GetStatus().GetReason(),
			NTokens: r.GetNTokens(), Truncated: r.GetTruncated(), Scores: scores,
		})
	}
	out["bundle_version"] = resp.GetBundleVersion()
	out["results"] = items
	return nil
}

// countSet is how many of the values are given.
func countSet(values ...*float64) int {
	n := 0
	for _, v := range values {
		if v != nil {
			n++
		}
	}
	return n
}

// estimate is a ModelEstimate as the conformance output prints it ({} when there is none).
func estimate(e *lmroutev1.ModelEstimate) map[string]any {
	if e == nil {
		return map[string]any{}
	}
	return map[string]any{
		"model":             e.GetModel(),
		"predicted_quality": e.GetPredictedQuality(),
		"expected_cost_usd": e.GetExpectedCostUsd(),
	}
}

// runRouteAmong routes among the case's candidates; the threshold (NaN) is not printed.
func runRouteAmong(ctx context.Context, c *lmroute.Client, cs conformanceCase, out map[string]any) error {
	var rule *lmroutev1.ModelPolicy
	switch {
	case cs.CostWeight != nil:
		rule = lmroute.CostWeight(*cs.CostWeight)
	case cs.QualityMargin != nil:
		rule = lmroute.QualityMargin(*cs.QualityMargin)
	case cs.QualityFloor != nil:
		rule = lmroute.QualityFloor(*cs.QualityFloor)
	}
	prompt := ""
	if cs.Prompt != nil {
		prompt = *cs.Prompt
	}
	d, err := c.Route(ctx, lmroute.RouteAmongRequest(prompt, cs.Router, cs.Candidates, rule))
	if err != nil {
		return err
	}
	out["chosen_model"] = d.GetChosenModel()
	out["tier"] = d.GetTier().String()
	out["score"] = d.GetScore()
	out["router"] = d.GetRouter()
	out["chosen"] = estimate(d.GetChosen())
	out["runner_up"] = estimate(d.GetRunnerUp())
	return nil
}

func runRoute(ctx context.Context, c *lmroute.Client, cs conformanceCase, out map[string]any) error {
	if cs.Candidates != nil {
		return runRouteAmong(ctx, c, cs, out)
	}
	req := &lmroutev1.RouteRequest{Router: cs.Router}
	if cs.Prompt != nil {
		req.Prompt = lmroute.Text(*cs.Prompt)
	}
	switch {
	case cs.Threshold != nil:
		req.Policy = lmroute.Threshold(*cs.Threshold)
	case cs.StrongShare != nil:
		req.Policy = lmroute.StrongShare(*cs.StrongShare)
	}
	d, err := c.Route(ctx, req)
	if err != nil {
		return err
	}
	out["chosen_model"] = d.GetChosenModel()
	out["tier"] = d.GetTier().String()
	out["score"] = d.GetScore()
	out["threshold"] = d.GetThreshold()
	out["router"] = d.GetRouter()
	return nil
}

func runList(ctx context.Context, c *lmroute.Client, out map[string]any) error {
	resp, err := c.ListRouters(ctx)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(resp.GetRouters()))
	for _, r := range resp.GetRouters() {
		names = append(names, r.GetName())
	}
	sort.Strings(names)
	out["routers"] = names
	return nil
}

func runFeedback(ctx context.Context, c *lmroute.Client, cs conformanceCase, out map[string]any) error {
	routed := ""
	if cs.Prompt != nil {
		req := &lmroutev1.RouteRequest{Prompt: lmroute.Text(*cs.Prompt), Router: cs.Router}
		if cs.Threshold != nil {
			req.Policy = lmroute.Threshold(*cs.Threshold)
		}
		d, err := c.Route(ctx, req)
		if err != nil {
			return err
		}
		routed = d.GetDecisionId()
	}
	reports := make([]*lmroutev1.OutcomeReport, 0, len(cs.Outcomes))
	for _, o := range cs.Outcomes {
		id := o.DecisionID
		if id == routedDecision {
			id = routed
		}
		if o.Single != nil {
			reports = append(reports, lmroute.SingleOutcome(id, *o.Single, o.Source))
		} else {
			reports = append(reports, lmroute.PairedOutcome(id, o.Paired[0], o.Paired[1], o.Source))
		}
	}
	resp, err := c.Feedback(ctx, reports...)
	if err != nil {
		return err
	}
	items := make([]map[string]any, 0, len(resp.GetResults()))
	for _, r := range resp.GetResults() {
		items = append(items, map[string]any{"item_code": r.GetCode(), "item_reason": r.GetReason()})
	}
	out["stored"] = resp.GetStored()
	out["results"] = items
	return nil
}

func shareMap(targets []*lmroutev1.TenantTarget) map[string]float64 {
	m := make(map[string]float64, len(targets))
	for _, t := range targets {
		m[t.GetTenant()] = t.GetStrongShare()
	}
	return m
}

func spendMap(targets []*lmroutev1.TenantSpendTarget) map[string]float64 {
	m := make(map[string]float64, len(targets))
	for _, t := range targets {
		m[t.GetTenant()] = t.GetSpendPer_1KUsd()
	}
	return m
}

// codeName is the canonical upper-case name of a gRPC code ("INVALID_ARGUMENT"), as google.rpc.Code spells it.
func codeName(c codes.Code) string {
	return code.Code(c).String()
}

// runToJudge asks for the decisions to judge; the answer as counts (which decisions depends on the
// store's contents, which every client's run changes).
func runToJudge(ctx context.Context, c *lmroute.Client, cs conformanceCase, out map[string]any) error {
	req := &lmroutev1.DecisionsToJudgeRequest{Budget: cs.Budget, Window: cs.Window, SinceMs: cs.SinceMs}
	resp, err := c.DecisionsToJudge(ctx, req)
	if err != nil {
		return err
	}
	withPrompts := 0
	for _, d := range resp.GetDecisions() {
		if d.GetPrompt() != "" && len(d.GetDecisionId()) == 32 {
			withPrompts++
		}
	}
	out["picked"], out["window"], out["with_prompts"] = len(resp.GetDecisions()), resp.GetWindow(), withPrompts
	out["next_since_ms_moved"] = resp.GetNextSinceMs() != cs.SinceMs
	return nil
}
