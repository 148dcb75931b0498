// Command lmroute-go-client calls an lmroute server from the command line.
//
//	lmroute-go-client route   --addr HOST:PORT [--router mf] [--threshold T | --strong-share S] PROMPT
//	lmroute-go-client score   --addr HOST:PORT [--routers mf,bert] PROMPT...
//	lmroute-go-client health  --addr HOST:PORT [--service NAME]       (exit 1 unless SERVING)
//	lmroute-go-client feedback --addr HOST:PORT --decision-id ID (--quality Q | --strong Q --weak Q) [--source S]
//	lmroute-go-client conformance --addr HOST:PORT --cases FILE   (clients/CONFORMANCE.md)
//
// Flags go before the arguments. Exit status: 0 on success, 1 when the call failed, 2 on bad arguments.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	lmroutev1 "lmroute/clients/go/gen/lmroute/v1"
	"lmroute/clients/go/lmroute"
)

const usage = `usage: lmroute-go-client COMMAND [flags]

commands:
  route        route one prompt: [--router NAME] [--threshold T | --strong-share S] PROMPT
               (neither: the caller's tenant's share target, held by the server)
  score        score prompts: [--routers a,b] PROMPT...
  health       grpc.health.v1 status: [--service NAME]
  feedback     report an outcome of a decision (route prints its id): --decision-id ID
               --quality Q (the chosen model's) | --strong Q --weak Q (both judged) [--source NAME]
  conformance  run a cases file (clients/CONFORMANCE.md): --cases FILE

common flags: --addr HOST:PORT (default 127.0.0.1:50051) --timeout 10s --attempts 4
              --ca FILE (TLS: the server's CA) --cert FILE --key FILE (mTLS: the client's certificate)
              --token-env NAME (bearer token from that variable) --tenant NAME (x-lmroute-tenant)
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// errUsage marks a bad command line (exit status 2).
var errUsage = errors.New("bad arguments")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "route":
		err = routeCmd(args[1:], stdout, stderr)
	case "score":
		err = scoreCmd(args[1:], stdout, stderr)
	case "health":
		err = healthCmd(args[1:], stdout, stderr)
	case "feedback":
		err = feedbackCmd(args[1:], stdout, stderr)
	case "conformance":
		err = conformanceCmd(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "lmroute-go-client: unknown command %q\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		fmt.Fprintf(stderr, "lmroute-go-client %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "lmroute-go-client %s: %s\n", args[0], describe(err))
		return 1
	}
}

// common holds the flags every command takes.
type common struct {
	addr     string
	timeout  time.Duration
	attempts int
	ca       string // TLS: the server's CA certificate (PEM file)
	cert     string // mTLS: the client's certificate chain (PEM file)
	key      string // mTLS: the client's private key (PEM file)
	tokenEnv string // the environment variable holding the bearer token
	tenant   string // the caller's tenant, named in every call's metadata
}

func newFlags(name string, stderr io.Writer) (*flag.FlagSet, *common) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &common{}
	fs.StringVar(&c.addr, "addr", "127.0.0.1:50051", "server address HOST:PORT")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "deadline of the call, retries included")
	fs.IntVar(&c.attempts, "attempts", lmroute.DefaultRetryPolicy.MaxAttempts, "attempts on RESOURCE_EXHAUSTED / UNAVAILABLE (1 = no retry)")
	fs.StringVar(&c.ca, "ca", "", "connect over TLS, trusting this CA certificate (PEM file)")
	fs.StringVar(&c.cert, "cert", "", "mTLS: present this client certificate chain (PEM file; with --key and --ca)")
	fs.StringVar(&c.key, "key", "", "mTLS: the client certificate's private key (PEM file)")
	fs.StringVar(&c.tokenEnv, "token-env", "", "send the bearer token held by this environment variable")
	fs.StringVar(&c.tenant, "tenant", "", "name this tenant in every call (x-lmroute-tenant)")
	return fs, c
}

// options are the connection settings of the flags: TLS, the token and the tenant.
func (c *common) options(o lmroute.Options) (lmroute.Options, error) {
	if c.ca != "" {
		pem, err := os.ReadFile(c.ca)
		if err != nil {
			return o, fmt.Errorf("%w: --ca: %v", errUsage, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return o, fmt.Errorf("%w: --ca %s: no PEM certificate in it", errUsage, c.ca)
		}
		o.TLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if (c.cert != "") != (c.key != "") || (c.cert != "" && c.ca == "") {
		return o, fmt.Errorf("%w: --cert and --key go together, with --ca", errUsage)
	}
	if c.cert != "" {
		pair, err := tls.LoadX509KeyPair(c.cert, c.key)
		if err != nil {
			return o, fmt.Errorf("%w: --cert/--key: %v", errUsage, err)
		}
		o.TLS.Certificates = []tls.Certificate{pair}
	}
	if err := printable("--tenant", c.tenant); err != nil {
		return o, err
	}
	o.Tenant = c.tenant
	if c.tokenEnv != "" {
		o.Token = os.Getenv(c.tokenEnv)
		if o.Token == "" {
			return o, fmt.Errorf("%w: --token-env: environment variable %s is not set", errUsage, c.tokenEnv)
		}
		if err := printable("the token in "+c.tokenEnv, o.Token); err != nil {
			return o, err
		}
	}
	return o, nil
}

// parse parses the flags, which go before the arguments: a flag of the command after an argument is
// refused (Go's flag package would take it, silently, as one more argument), unless "--" ends the flags.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	rest := fs.Args()
	if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
		return utf8Only(fs)
	}
	for _, a := range rest { // a flag this command does not know, too: it was meant as one, not as a prompt
		if len(a) > 1 && strings.HasPrefix(a, "-") {
			return fmt.Errorf("%w: %s comes after an argument: flags go before the arguments (-- before an argument that starts with -)", errUsage, a)
		}
	}
	return utf8Only(fs)
}

// utf8Only refuses an argument or flag value that is not UTF-8 text: gRPC's string fields carry only
// that, and the call would fail as an INTERNAL marshaling error that names nothing.
func utf8Only(fs *flag.FlagSet) error {
	for i, a := range fs.Args() {
		if !utf8.ValidString(a) {
			return fmt.Errorf("%w: argument %d (%q) is not UTF-8 text", errUsage, i+1, a)
		}
	}
	var bad error
	fs.Visit(func(f *flag.Flag) {
		if v := f.Value.String(); bad == nil && !utf8.ValidString(v) {
			bad = fmt.Errorf("%w: -%s %q is not UTF-8 text", errUsage, f.Name, v)
		}
	})
	return bad
}

// given reports whether the flag `name` was set on the command line.
func given(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// printable checks a value sent as gRPC metadata: printable ASCII only.
func printable(flagName, value string) error {
	for i, r := range value {
		if r < 0x20 || r > 0x7e {
			return fmt.Errorf("%w: %s: only printable ASCII may be sent (character %d is not)", errUsage, flagName, i+1)
		}
	}
	return nil
}

func (c *common) client() (*lmroute.Client, error) {
	if c.attempts < 1 {
		return nil, fmt.Errorf("%w: --attempts must be >= 1 (got %d)", errUsage, c.attempts)
	}
	if c.timeout <= 0 {
		return nil, fmt.Errorf("%w: --timeout must be > 0 (got %s)", errUsage, c.timeout)
	}
	if err := checkAddr(c.addr); err != nil {
		return nil, err
	}
	policy := lmroute.DefaultRetryPolicy
	policy.MaxAttempts = c.attempts
	opts, err := c.options(lmroute.Options{Timeout: c.timeout, Retry: policy})
	if err != nil {
		return nil, err
	}
	return lmroute.New(c.addr, opts)
}

// checkAddr refuses an --addr that is not HOST:PORT with a port in 1-65535 (gRPC would dial port 443 for
// a missing one, or retry an unusable one as UNAVAILABLE until the deadline).
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err == nil && host == "" {
		err = errors.New("no host")
	}
	if n, perr := strconv.Atoi(port); err == nil && (perr != nil || n < 1 || n > 65535) {
		err = errors.New("the port must be a number in 1-65535")
	}
	if err != nil {
		return fmt.Errorf("%w: --addr %q: expected HOST:PORT (%v)", errUsage, addr, err)
	}
	return nil
}

// describe renders a gRPC error as "CODE (REASON): message".
func describe(err error) string {
	s, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	if r := lmroute.Reason(err); r != "" {
		return fmt.Sprintf("%s (%s): %s", codeName(s.Code()), r, s.Message())
	}
	return fmt.Sprintf("%s: %s", codeName(s.Code()), s.Message())
}

func routeCmd(args []string, stdout, stderr io.Writer) error {
	fs, com := newFlags("route", stderr)
	router := fs.String("router", "", "router name (empty: the bundle's default router; with --models, its default quality router)")
	threshold := fs.Float64("threshold", 0, "explicit threshold in [0, 1]")
	share := fs.Float64("strong-share", 0, "target share of strong calls in [0, 1]")
	models := fs.String("models", "", "comma-separated models to choose among (a quality router's; empty: the strong/weak pair)")
	costWeight := fs.Float64("cost-weight", 0, "with --models: maximise quality - w x the cost of 1,000 such requests (USD)")
	margin := fs.Float64("quality-margin", 0, "with --models: the cheapest model predicted within this of the best")
	floor := fs.Float64("quality-floor", 0, "with --models: the cheapest model predicted at or above this quality")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: need exactly one PROMPT argument", errUsage)
	}
	setT, setS := given(fs, "threshold"), given(fs, "strong-share")
	if setT && setS {
		return fmt.Errorf("%w: give at most one of --threshold and --strong-share", errUsage)
	}
	rules := 0
	for _, name := range []string{"cost-weight", "quality-margin", "quality-floor"} {
		if given(fs, name) {
			rules++
		}
	}
	if *models == "" && rules > 0 {
		return fmt.Errorf("%w: --cost-weight, --quality-margin and --quality-floor need --models", errUsage)
	}
	if *models != "" && (setT || setS || rules > 1) {
		return fmt.Errorf("%w: with --models give at most one of --cost-weight, --quality-margin, --quality-floor", errUsage)
	}
	names := strings.Split(*models, ",")
	for i, m := range names {
		if *models != "" && m == "" {
			return fmt.Errorf("%w: --models: name %d is empty (%q)", errUsage, i+1, *models)
		}
	}
	c, err := com.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if *models != "" {
		var rule *lmroutev1.ModelPolicy // none: the server holds the caller's tenant's spend target
		switch {
		case given(fs, "cost-weight"):
			rule = lmroute.CostWeight(*costWeight)
		case given(fs, "quality-margin"):
			rule = lmroute.QualityMargin(*margin)
		case given(fs, "quality-floor"):
			rule = lmroute.QualityFloor(*floor)
		}
		d, err := c.Route(context.Background(), lmroute.RouteAmongRequest(fs.Arg(0), *router, names, rule))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\tpredicted_quality=%.4f expected_cost_usd=%.6g runner_up=%s propensity=%.6f router=%s bundle=%s decision=%s\n",
			d.GetChosenModel(), d.GetChosen().GetPredictedQuality(), d.GetChosen().GetExpectedCostUsd(),
			d.GetRunnerUp().GetModel(), d.GetPropensity(), d.GetRouter(), d.GetBundleVersion(), d.GetDecisionId())
		return nil
	}
	// neither: the server holds the caller's tenant's share target (--tenant; its --share-targets)
	req := &lmroutev1.RouteRequest{Prompt: lmroute.Text(fs.Arg(0)), Router: *router}
	switch {
	case setT:
		req = lmroute.RouteRequest(fs.Arg(0), *router, lmroute.Threshold(*threshold))
	case setS:
		req = lmroute.RouteRequest(fs.Arg(0), *router, lmroute.StrongShare(*share))
	}
	d, err := c.Route(context.Background(), req)
	if err != nil {
		return err
	}
	// propensity: 1 when the policy decided, below 1 for an exploring decision (what an outcome of it is
	// weighted by)
	fmt.Fprintf(stdout, "%s\t%s\tscore=%.6f threshold=%.6f propensity=%.6f router=%s bundle=%s decision=%s\n",
		d.GetChosenModel(), d.GetTier(), d.GetScore(), d.GetThreshold(), d.GetPropensity(), d.GetRouter(),
		d.GetBundleVersion(), d.GetDecisionId())
	return nil
}

func scoreCmd(args []string, stdout, stderr io.Writer) error {
	fs, com := newFlags("score", stderr)
	routers := fs.String("routers", "", "comma-separated router names (default: all)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: need at least one PROMPT argument", errUsage)
	}
	var names []string
	if *routers != "" {
		names = strings.Split(*routers, ",")
	}
	c, err := com.client()
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.Score(context.Background(), lmroute.ScoreRequest(fs.Args(), names...))
	if err != nil {
		return err
	}
	for _, r := range resp.GetResults() {
		if st := r.GetStatus(); st.GetCode() != 0 {
			fmt.Fprintf(stdout, "[%d] error %s: %s\n", r.GetIndex(), st.GetReason(), st.GetMessage())
			continue
		}
		parts := make([]string, 0, len(r.GetScores()))
		for _, s := range r.GetScores() {
			parts = append(parts, fmt.Sprintf("%s=%.6f", s.GetRouter(), s.GetStrongWinProbability()))
		}
		fmt.Fprintf(stdout, "[%d] tokens=%d truncated=%t %s\n", r.GetIndex(), r.GetNTokens(), r.GetTruncated(), strings.Join(parts, " "))
	}
	return nil
}

func healthCmd(args []string, stdout, stderr io.Writer) error {
	fs, com := newFlags("health", stderr)
	service := fs.String("service", "", `service name ("" = whole server)`)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	c, err := com.client()
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Health(context.Background(), *service)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, st)
	if st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("service %q is %s", *service, st)
	}
	return nil
}

func feedbackCmd(args []string, stdout, stderr io.Writer) error {
	fs, com := newFlags("feedback", stderr)
	id := fs.String("decision-id", "", "the decision the outcome is about (route prints it)")
	quality := fs.Float64("quality", 0, "the chosen model's quality in [0, 1]")
	strong := fs.Float64("strong", 0, "with --weak: the strong model's quality in [0, 1]")
	weak := fs.Float64("weak", 0, "with --strong: the weak model's quality in [0, 1]")
	source := fs.String("source", "", `who judged ("thumbs", "judge:gpt-4", ...)`)
	if err := parse(fs, args); err != nil {
		return err
	}
	single, paired := given(fs, "quality"), given(fs, "strong") || given(fs, "weak")
	switch {
	case fs.NArg() != 0:
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	case *id == "":
		return fmt.Errorf("%w: need --decision-id", errUsage)
	case single == paired || (paired && !(given(fs, "strong") && given(fs, "weak"))):
		return fmt.Errorf("%w: give --quality, or --strong and --weak", errUsage)
	}
	c, err := com.client()
	if err != nil {
		return err
	}
	defer c.Close()
	report := lmroute.SingleOutcome(*id, *quality, *source)
	if paired {
		report = lmroute.PairedOutcome(*id, *strong, *weak, *source)
	}
	resp, err := c.Feedback(context.Background(), report)
	if err != nil {
		return err
	}
	if len(resp.GetResults()) != 1 { // one outcome sent: one status owed (a server answering otherwise is broken)
		return fmt.Errorf("the server answered %d statuses for the 1 outcome sent (stored %d)", len(resp.GetResults()), resp.GetStored())
	}
	st := resp.GetResults()[0]
	if st.GetCode() != 0 {
		return fmt.Errorf("%s (%s): %s", codeName(codes.Code(st.GetCode())), st.GetReason(), st.GetMessage())
	}
	if st.GetReason() != "" {
		fmt.Fprintf(stdout, "stored %d (%s)\n", resp.GetStored(), st.GetReason())
	} else {
		fmt.Fprintf(stdout, "stored %d\n", resp.GetStored())
	}
	return nil
}
