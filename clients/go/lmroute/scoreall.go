package lmroute

// Splitting a large Score into calls the server takes, by the limits it says in ListRouters.limits. The
// rule is the Python clients' (service/client.py, score_calls), so that every client splits the same
// prompts into the same calls.

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	lmroutev1 "lmroute/clients/go/gen/lmroute/v1"
)

const (
	// scoreBatch caps the prompts of one call whatever the server takes (the Python Controller's
	// _SCORE_BATCH): a call's answer waits for its slowest prompt.
	scoreBatch = 128
	// defaultMaxRequestChars and defaultMaxMessageBytes are lmroute-serve's defaults, for a server that
	// says no limits (all 0: an older server).
	defaultMaxRequestChars = 1_000_000
	defaultMaxMessageBytes = 4 << 20
	// clientMessageBytes is what this client receives in one message (grpc-go's default receive limit).
	clientMessageBytes = 4 << 20
	// promptFraming is the bytes counted per prompt beside its text (tags and lengths of the message).
	promptFraming = 16
)

// callLimits are what one Score call may carry: prompts, characters of prompt text, bytes of it.
type callLimits struct {
	prompts, chars, bytes int
}

// limitsOf are the per-call limits under said (0 fields: the server's defaults). The bytes are 0.9 x the
// smaller of the two ends' message limits: room for the rest of the request.
func limitsOf(said *lmroutev1.CallLimits) callLimits {
	lim := callLimits{prompts: scoreBatch, chars: defaultMaxRequestChars, bytes: defaultMaxMessageBytes}
	if n := said.GetMaxPromptsPerRequest(); n > 0 && n < scoreBatch {
		lim.prompts = int(n)
	}
	if n := said.GetMaxRequestChars(); n > 0 {
		lim.chars = int(n)
	}
	if n := said.GetMaxMessageBytes(); n > 0 {
		lim.bytes = int(n)
	}
	lim.bytes = int(0.9 * float64(min(lim.bytes, clientMessageBytes)))
	return lim
}

// splitCalls gives the [start, stop) of each Score call over texts: as many prompts as lim takes, and at
// least one, so that a prompt over a limit on its own goes alone and the server answers for it (a prompt
// over max_prompt_chars fails alone, as its item's status).
func splitCalls(texts []string, lim callLimits) [][2]int {
	var calls [][2]int
	for start := 0; start < len(texts); {
		stop, chars, size := start, 0, 0
		for stop < len(texts) && stop-start < lim.prompts {
			n := utf8.RuneCountInString(texts[stop]) // the server counts characters (code points)
			b := len(texts[stop]) + promptFraming
			if stop > start && (chars+n > lim.chars || size+b > lim.bytes) {
				break
			}
			chars, size, stop = chars+n, size+b, stop+1
		}
		calls = append(calls, [2]int{start, stop})
		start = stop
	}
	return calls
}

// Limits are the server's limits on one call (ListRouters.limits; 0 where it says none), asked once and
// kept for the client's life.
func (c *Client) Limits(ctx context.Context) (*lmroutev1.CallLimits, error) {
	c.limitsMu.Lock()
	defer c.limitsMu.Unlock()
	if c.limits != nil {
		return c.limits, nil
	}
	listed, err := c.ListRouters(ctx)
	if err != nil {
		return nil, err
	}
	c.limits = listed.GetLimits()
	if c.limits == nil { // a server that predates the field: its defaults
		c.limits = &lmroutev1.CallLimits{}
	}
	return c.limits, nil
}

// ScoreAll scores texts under routers (none = every loaded router) in as many Score calls as the
// server's limits need (Limits: prompts per call, characters per call, and 0.9 x the smaller of the
// server's and this client's message limits), one after another. The results come in the order of texts,
// each Index (and the "prompts[i]" of a failed item's message) that of texts; BundleVersion is the last
// call's. A bad prompt fails alone, as in Score. A call that fails ends ScoreAll with its error (nothing
// of the calls before it is returned), as the Python Controller does: e.g. one prompt alone over the
// server's max_request_chars (INVALID_ARGUMENT REQUEST_TOO_LONG). With no texts it makes no Score call
// (the first use of a client asks ListRouters for the limits all the same). Each
// call has ctx's deadline, or Options.Timeout of its own when ctx has none.
func (c *Client) ScoreAll(ctx context.Context, texts []string, routers ...string) (*lmroutev1.ScoreResponse, error) {
	said, err := c.Limits(ctx)
	if err != nil {
		return nil, err
	}
	out := &lmroutev1.ScoreResponse{Results: make([]*lmroutev1.PromptScores, 0, len(texts))}
	for _, span := range splitCalls(texts, limitsOf(said)) {
		resp, err := c.Score(ctx, ScoreRequest(texts[span[0]:span[1]], routers...))
		if err != nil {
			return nil, err
		}
		for _, r := range resp.GetResults() {
			rebase(r, span[0])
			out.Results = append(out.Results, r)
		}
		out.BundleVersion = resp.GetBundleVersion()
	}
	return out, nil
}

// rebase moves a result of a call whose first prompt is texts[offset] to its place in texts: its Index,
// and the "prompts[j]: " its status message starts with (the server names the prompt by its place in the
// call).
func rebase(r *lmroutev1.PromptScores, offset int) {
	if offset == 0 {
		return
	}
	j := int(r.GetIndex())
	r.Index = int32(j + offset)
	if st := r.GetStatus(); st != nil {
		if said, ok := strings.CutPrefix(st.GetMessage(), fmt.Sprintf("prompts[%d]: ", j)); ok {
			st.Message = fmt.Sprintf("prompts[%d]: %s", j+offset, said)
		}
	}
}
