package lmroute

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RetryPolicy says how a call is retried when the server is overloaded or briefly unavailable
// (codes RESOURCE_EXHAUSTED and UNAVAILABLE). Every other error is returned at once.
//
// The delay before retry n (n = 1 for the first retry) is InitialBackoff * Multiplier^(n-1), capped at
// MaxBackoff, then spread by ±Jitter (a fraction: 0.2 means ±20%). When the error carries a
// google.rpc.RetryInfo, its retry_delay is used instead, spread upwards only (never earlier than the
// server asked). A retry never starts past the call's deadline, nor with under MinAttempt of it left:
// then the last error is returned.
type RetryPolicy struct {
	MaxAttempts    int           // total attempts, the first included; 1 turns retries off
	InitialBackoff time.Duration // delay before the first retry
	MaxBackoff     time.Duration // cap of the computed (not the server-given) delay
	Multiplier     float64       // growth of the delay per retry
	Jitter         float64       // spread of each delay, a fraction in [0, 1]
}

// DefaultRetryPolicy: 4 attempts, 50 ms doubling to at most 2 s, ±20% jitter.
var DefaultRetryPolicy = RetryPolicy{
	MaxAttempts: 4, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second, Multiplier: 2, Jitter: 0.2,
}

// NoRetry makes exactly one attempt.
var NoRetry = RetryPolicy{MaxAttempts: 1}

// Validate reports the first field that is out of range. Multiplier and Jitter must be finite numbers
// (a NaN passes every comparison and an infinity overflows the delay: both gave negative backoffs and
// back-to-back retries) and the durations must not be negative, whatever MaxAttempts is; with retries on
// (MaxAttempts > 1) MaxBackoff >= InitialBackoff, Multiplier >= 1 and Jitter in [0, 1] too.
func (p RetryPolicy) Validate() error {
	for _, f := range []struct {
		name  string
		value float64
	}{{"Multiplier", p.Multiplier}, {"Jitter", p.Jitter}} {
		if math.IsNaN(f.value) || math.IsInf(f.value, 0) {
			return fmt.Errorf("lmroute: RetryPolicy.%s must be a finite number (got %g)", f.name, f.value)
		}
	}
	switch {
	case p.MaxAttempts < 1:
		return fmt.Errorf("lmroute: RetryPolicy.MaxAttempts must be >= 1 (got %d)", p.MaxAttempts)
	case p.InitialBackoff < 0:
		return fmt.Errorf("lmroute: RetryPolicy.InitialBackoff must be >= 0 (got %s)", p.InitialBackoff)
	case p.MaxBackoff < 0:
		return fmt.Errorf("lmroute: RetryPolicy.MaxBackoff must be >= 0 (got %s)", p.MaxBackoff)
	case p.MaxAttempts == 1:
		return nil
	case p.MaxBackoff < p.InitialBackoff:
		return fmt.Errorf("lmroute: RetryPolicy.MaxBackoff (%s) must be >= InitialBackoff (%s)", p.MaxBackoff, p.InitialBackoff)
	case p.Multiplier < 1:
		return fmt.Errorf("lmroute: RetryPolicy.Multiplier must be >= 1 (got %g)", p.Multiplier)
	case p.Jitter < 0 || p.Jitter > 1:
		return fmt.Errorf("lmroute: RetryPolicy.Jitter must be in [0, 1] (got %g)", p.Jitter)
	}
	return nil
}

// Retryable reports whether err is a status worth retrying: RESOURCE_EXHAUSTED or UNAVAILABLE, but not
// gRPC's refusal of a message over the size limit ("Sent/Received message larger than max"), which the
// same message meets again.
func Retryable(err error) bool {
	switch status.Code(err) {
	case codes.ResourceExhausted:
		return !strings.Contains(status.Convert(err).Message(), "message larger than max")
	case codes.Unavailable:
		return true
	}
	return false
}

// MinAttempt is the least time left of a call's deadline in which a retry is begun: with less it could
// only end DEADLINE_EXCEEDED, and the caller is better told why the last attempt was refused.
const MinAttempt = 10 * time.Millisecond

// Backoff is the delay before retry n (n >= 1) after err; u is a uniform random number in [0, 1). A
// server's delay too long for a Duration saturates at the longest one (never wraps negative).
func (p RetryPolicy) Backoff(n int, err error, u float64) time.Duration {
	if d, ok := RetryDelay(err); ok {
		return time.Duration(math.Min(float64(d)*(1+p.Jitter*u), float64(math.MaxInt64-1024)))
	}
	base := float64(p.InitialBackoff) * math.Pow(p.Multiplier, float64(n-1))
	base = math.Min(base, float64(p.MaxBackoff))
	d := base * (1 + p.Jitter*(2*u-1))
	return time.Duration(math.Min(d, float64(p.MaxBackoff)))
}

// retrier runs one call under a RetryPolicy; sleep and random are replaceable for tests.
type retrier struct {
	policy RetryPolicy
	sleep  func(ctx context.Context, d time.Duration) error
	random func() float64
}

func newRetrier(p RetryPolicy) retrier {
	return retrier{policy: p, sleep: sleepCtx, random: rand.Float64}
}

// do calls attempt until it succeeds, fails with a non-retryable error, runs out of attempts, or the next
// delay would end past ctx's deadline. It returns the last attempt's error.
func (r retrier) do(ctx context.Context, attempt func(context.Context) error) error {
	var err error
	for n := 1; ; n++ {
		if err = attempt(ctx); err == nil || !Retryable(err) || n >= r.policy.MaxAttempts {
			return err
		}
		d := r.policy.Backoff(n, err, r.random())
		dl, ok := ctx.Deadline()
		if ok && time.Until(dl)-MinAttempt <= d { // (not d+MinAttempt: d may be the longest Duration)
			return err
		}
		if serr := r.sleep(ctx, d); serr != nil {
			return err
		}
		if ok && time.Until(dl) < MinAttempt { // the sleep overran
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RetryDelay is the retry_delay of the google.rpc.RetryInfo carried by err, if any.
func RetryDelay(err error) (time.Duration, bool) {
	for _, d := range details(err) {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			if delay := ri.GetRetryDelay().AsDuration(); delay >= 0 { // a negative delay says nothing
				return delay, true
			}
		}
	}
	return 0, false
}

// Reason is the reason of the first google.rpc.ErrorInfo carried by err (e.g. "EMPTY_PROMPT"), or "".
func Reason(err error) string {
	for _, d := range details(err) {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

func details(err error) []any {
	var se interface{ GRPCStatus() *status.Status }
	if err == nil || !errors.As(err, &se) {
		return nil
	}
	return se.GRPCStatus().Details()
}
