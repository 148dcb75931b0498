package lmroute

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

func statusErr(t *testing.T, c codes.Code, reason string, retryDelay time.Duration) error {
	t.Helper()
	det := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: "lmroute"}}
	if retryDelay > 0 {
		det = append(det, &errdetails.RetryInfo{RetryDelay: durationpb.New(retryDelay)})
	}
	st, err := status.New(c, "test: "+reason).WithDetails(det...)
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestBackoffGrowsExponentiallyUpToTheCap(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 10, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.2}
	err := status.Error(codes.Unavailable, "down")
	want := []time.Duration{50, 100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := p.Backoff(i+1, err, 0.5); got != w*time.Millisecond { // u = 0.5: no spread
			t.Errorf("retry %d: backoff %s, want %s", i+1, got, w*time.Millisecond)
		}
	}
}

func TestJitterSpreadsWithinBounds(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 3, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.2}
	err := status.Error(codes.ResourceExhausted, "full")
	if got := p.Backoff(1, err, 0); got != 80*time.Millisecond {
		t.Errorf("u=0: %s, want 80ms", got)
	}
	if got := p.Backoff(1, err, 0.999999); got < 119*time.Millisecond || got > 120*time.Millisecond {
		t.Errorf("u~1: %s, want ~120ms", got)
	}
	if got := p.Backoff(5, err, 0.999999); got != time.Second {
		t.Errorf("capped delay with jitter: %s, want the 1s cap", got)
	}
}

func TestRetryInfoDelayIsHonouredAndNeverShortened(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Multiplier: 2, Jitter: 0.5}
	err := statusErr(t, codes.Unavailable, "NOT_READY", 300*time.Millisecond)
	if d, ok := RetryDelay(err); !ok || d != 300*time.Millisecond {
		t.Fatalf("RetryDelay = %s, %t; want 300ms, true", d, ok)
	}
	if got := p.Backoff(1, err, 0); got != 300*time.Millisecond {
		t.Errorf("u=0: %s, want the server's 300ms (above MaxBackoff: the server's delay wins)", got)
	}
	if got := p.Backoff(1, err, 1); got != 450*time.Millisecond {
		t.Errorf("u=1: %s, want 450ms (jitter only upwards)", got)
	}
	if Reason(err) != "NOT_READY" {
		t.Errorf("Reason = %q, want NOT_READY", Reason(err))
	}
}

func TestReasonAndRetryDelayOfPlainErrors(t *testing.T) {
	if r := Reason(status.Error(codes.NotFound, "x")); r != "" {
		t.Errorf("Reason without details = %q", r)
	}
	if _, ok := RetryDelay(context.DeadlineExceeded); ok {
		t.Error("RetryDelay of a non-status error reported a delay")
	}
	if Reason(nil) != "" {
		t.Error("Reason(nil) is not empty")
	}
}

// fakeRun records the delays a retrier sleeps and answers attempts from a script of errors.
func fakeRun(t *testing.T, p RetryPolicy, ctx context.Context, errs []error) (attempts int, sleeps []time.Duration, err error) {
	t.Helper()
	r := retrier{
		policy: p,
		sleep:  func(_ context.Context, d time.Duration) error { sleeps = append(sleeps, d); return nil },
		random: func() float64 { return 0.5 },
	}
	err = r.do(ctx, func(context.Context) error {
		attempts++
		if attempts <= len(errs) {
			return errs[attempts-1]
		}
		return nil
	})
	return attempts, sleeps, err
}

func TestRetriesOverloadUntilSuccess(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 4, InitialBackoff: 10 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 3}
	errs := []error{
		status.Error(codes.Unavailable, "down"),
		statusErr(t, codes.ResourceExhausted, "QUEUE_FULL", 50*time.Millisecond),
		status.Error(codes.Unavailable, "down"),
	}
	n, sleeps, err := fakeRun(t, p, context.Background(), errs)
	if err != nil || n != 4 {
		t.Fatalf("attempts=%d err=%v; want 4 attempts and success", n, err)
	}
	want := []time.Duration{10 * time.Millisecond, 50 * time.Millisecond, 90 * time.Millisecond}
	for i := range want {
		if sleeps[i] != want[i] {
			t.Errorf("sleep %d = %s, want %s (all: %v)", i, sleeps[i], want[i], sleeps)
		}
	}
}

func TestStopsAtMaxAttemptsWithTheLastError(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Multiplier: 1}
	last := statusErr(t, codes.ResourceExhausted, "QUEUE_FULL", 0)
	n, sleeps, err := fakeRun(t, p, context.Background(), []error{status.Error(codes.Unavailable, "a"), status.Error(codes.Unavailable, "b"), last, nil})
	if n != 3 || len(sleeps) != 2 || Reason(err) != "QUEUE_FULL" {
		t.Fatalf("attempts=%d sleeps=%d err=%v; want 3 attempts, 2 sleeps, the QUEUE_FULL error", n, len(sleeps), err)
	}
}

func TestDoesNotRetryOtherCodes(t *testing.T) {
	for _, c := range []codes.Code{codes.InvalidArgument, codes.NotFound, codes.DeadlineExceeded, codes.Internal} {
		n, _, err := fakeRun(t, DefaultRetryPolicy, context.Background(), []error{status.Error(c, "no")})
		if n != 1 || status.Code(err) != c {
			t.Errorf("%s: attempts=%d err=%v; want one attempt", c, n, err)
		}
	}
}

func TestNoRetryMakesOneAttempt(t *testing.T) {
	n, _, err := fakeRun(t, NoRetry, context.Background(), []error{status.Error(codes.Unavailable, "down")})
	if n != 1 || status.Code(err) != codes.Unavailable {
		t.Fatalf("attempts=%d err=%v; want one attempt", n, err)
	}
}

func TestNoRetryPastTheDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	n, sleeps, err := fakeRun(t, DefaultRetryPolicy, ctx, []error{statusErr(t, codes.Unavailable, "NOT_READY", time.Second)})
	if n != 1 || len(sleeps) != 0 || Reason(err) != "NOT_READY" {
		t.Fatalf("attempts=%d sleeps=%v err=%v; a 1s retry delay past a 100ms deadline must not be waited", n, sleeps, err)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	bad := map[string]RetryPolicy{
		"MaxAttempts":    {MaxAttempts: 0},
		"InitialBackoff": {MaxAttempts: 2, InitialBackoff: -1, Multiplier: 2},
		"MaxBackoff":     {MaxAttempts: 2, InitialBackoff: time.Second, MaxBackoff: time.Millisecond, Multiplier: 2},
		"Multiplier":     {MaxAttempts: 2, MaxBackoff: time.Second, Multiplier: 0.5},
		"Jitter":         {MaxAttempts: 2, MaxBackoff: time.Second, Multiplier: 2, Jitter: 1.5},
	}
	for field, p := range bad {
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: Validate() = %v, want an error naming %s", field, err, field)
		}
	}
	if err := DefaultRetryPolicy.Validate(); err != nil {
		t.Errorf("DefaultRetryPolicy: %v", err)
	}
}

func TestAMessageOverTheSizeLimitIsNotRetried(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{status.Error(codes.ResourceExhausted, "queue full"), true},
		{status.Error(codes.Unavailable, "draining"), true},
		{status.Error(codes.ResourceExhausted, "grpc: received message larger than max (5000000 vs. 4194304)"), false},
		{status.Error(codes.ResourceExhausted, "CLIENT: Sent message larger than max (4601614 vs. 4194304)"), false},
		{status.Error(codes.InvalidArgument, "bad"), false},
	}
	for _, c := range cases {
		if got := Retryable(c.err); got != c.want {
			t.Errorf("Retryable(%v) = %t, want %t", c.err, got, c.want)
		}
	}
}

func TestValidateRefusesNonFiniteAndNegativeFields(t *testing.T) {
	ok := RetryPolicy{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2, Jitter: 0.2}
	bad := []struct {
		field string
		edit  func(*RetryPolicy)
	}{
		{"Multiplier", func(p *RetryPolicy) { p.Multiplier = math.NaN() }},
		{"Multiplier", func(p *RetryPolicy) { p.Multiplier = math.Inf(1) }},
		{"Multiplier", func(p *RetryPolicy) { p.Multiplier = math.NaN(); p.MaxAttempts = 1 }},
		{"Jitter", func(p *RetryPolicy) { p.Jitter = math.NaN() }},
		{"Jitter", func(p *RetryPolicy) { p.Jitter = math.Inf(-1) }},
		{"Jitter", func(p *RetryPolicy) { p.Jitter = math.Inf(1); p.MaxAttempts = 1 }},
		{"InitialBackoff", func(p *RetryPolicy) { p.InitialBackoff = -time.Millisecond; p.MaxAttempts = 1 }},
		{"MaxBackoff", func(p *RetryPolicy) { p.MaxBackoff = -time.Millisecond; p.MaxAttempts = 1 }},
	}
	for _, b := range bad {
		p := ok
		b.edit(&p)
		err := p.Validate()
		if err == nil || !strings.Contains(err.Error(), "RetryPolicy."+b.field) {
			t.Errorf("%+v: Validate() = %v, want an error naming %s", p, err, b.field)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("%+v: %v", ok, err)
	}
	if err := NoRetry.Validate(); err != nil {
		t.Errorf("NoRetry: %v", err)
	}
}

func TestNewRefusesANaNMultiplier(t *testing.T) {
	// A NaN multiplier made Backoff negative: every retry back-to-back.
	p := RetryPolicy{MaxAttempts: 4, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Multiplier: math.NaN(), Jitter: 0.2}
	if _, err := New("127.0.0.1:1", Options{Retry: p}); err == nil || !strings.Contains(err.Error(), "Multiplier") {
		t.Fatalf("New with a NaN Multiplier: %v, want an error naming Multiplier", err)
	}
}

func retryInfoErr(t *testing.T, delay *durationpb.Duration) error {
	t.Helper()
	st, err := status.New(codes.ResourceExhausted, "test: FEEDBACK_RATE").WithDetails(
		&errdetails.ErrorInfo{Reason: "FEEDBACK_RATE", Domain: "lmroute"}, &errdetails.RetryInfo{RetryDelay: delay})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestAServersDelayTooLongForADurationIsWaitedNotWrapped(t *testing.T) {
	err := retryInfoErr(t, &durationpb.Duration{Seconds: 100_000_000_000}) // about 3,170 years
	if got := DefaultRetryPolicy.Backoff(1, err, 0.999); got <= 0 {
		t.Fatalf("Backoff = %s: wrapped negative, retries would fire back to back", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if n, sleeps, _ := fakeRun(t, DefaultRetryPolicy, ctx, []error{err, err, err}); n != 1 || len(sleeps) != 0 {
		t.Fatalf("attempts=%d sleeps=%v; want one attempt (the delay reaches past the deadline)", n, sleeps)
	}
}

func TestANegativeServerDelayIsNoDelay(t *testing.T) {
	if d, ok := RetryDelay(retryInfoErr(t, &durationpb.Duration{Seconds: -5})); ok {
		t.Fatalf("RetryDelay = %s, true; a negative delay says nothing", d)
	}
}

func TestNoRetryBegunWithUnderMinAttemptLeft(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Millisecond)
	defer cancel()
	// the server's 50 ms, u = 0.5 with Jitter 0: a retry would begin with about 5 ms left
	p := RetryPolicy{MaxAttempts: 4, InitialBackoff: time.Millisecond, MaxBackoff: time.Second, Multiplier: 2}
	n, sleeps, err := fakeRun(t, p, ctx, []error{statusErr(t, codes.ResourceExhausted, "QUEUE_FULL", 50*time.Millisecond)})
	if n != 1 || len(sleeps) != 0 || Reason(err) != "QUEUE_FULL" {
		t.Fatalf("attempts=%d sleeps=%v err=%v; want the refusal, no retry", n, sleeps, err)
	}
}
