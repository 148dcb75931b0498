"""lmroute.service: the gRPC Score/Route service.

Three one-way layers (transport -> scheduler -> scorers):

    main.py          `lmroute-serve` entry point: config, signals, exit codes
    config.py        ServiceConfig with its BatchPolicy nested (frozen; every leaf a --flag and an LMROUTE_* variable)
    server.py        RouterServer lifecycle: bind, health, reflection, plug-ins + load + warm, drain
    interceptors.py  request id, access log (shed calls sampled), malformed bytes, ServiceError -> gRPC status
    transports.py    the gRPC port served by threads (a synchronous server handing calls to the loop) or grpc.aio
    stream_cap.py    StreamSlots: at most max_streams streaming calls (health Watch, reflection) open at once
    wire_status.py   an error's StatusInfo as the grpc.Status a call ends with (ErrorInfo, RetryInfo)
    liveness.py      LivenessWatchdog: overall health NOT_SERVING while the scorer makes no progress
    servicer.py      RouterService RPCs: wire messages <-> scheduler; router names resolved here, once
    feedback.py      Feedback on the wire <-> the outcome store's records; decision records of answers
    feedback_rate.py FeedbackRate: at most feedback_rate outcomes a second from each tenant (token buckets)
    exploration.py   Route's exploration rule: decisions flipped near the threshold, with their propensity
    admin.py         AdminService RPCs: ReloadBundle (hot swap), GetBundle, tenants' targets listed and set
    bundle_swap.py   BundleSwapper: load, check, warm a candidate off the loop, switch between batches, watch the path
    prompts.py       wire Prompt (text / conversation) -> text to score, per-call caps
    decisions.py     decision ids (time-ordered, 32 hex) on every Route answer and scored prompt
    errors.py        the exception tree and THE error -> status-code table (no gRPC import)
    scheduler.py     admission + tokenising at admission + micro-batching worker + scoring thread
    admission.py     who is admitted: memory bound, caller deadline, queue wait at the measured rate
    batch_queue.py   the queue's state: Item (with its tokens), one line per call, fair BatchQueue
    scorer_api.py    the Scorer protocol between scheduler and scorers (generic in its tokens)
    bundle_scorer.py the product Scorer over a router bundle (lmroute.bundle)
    fake_scorer.py   FakeScorer: blocks / fails / is slow on cue (tests, demos)
    client.py        RouterClient and AsyncRouterClient, small typed clients
    client_retry.py  their retry policy (RESOURCE_EXHAUSTED / UNAVAILABLE, the server's RetryInfo, the deadline)
    admin_cli.py     `lmroute-admin`: AdminService from a shell (bundle, reload, targets, set-targets)
    tenant_slots.py  an upstream's slots in the OpenAI front, shared by tenants
    circuit_breaker.py whether the front skips a failing upstream for now (a side set to fall back)
    front_requests.py what an OpenAI-shaped request asks: its model name's router and policy, the turn routed
    front_models.py  the front's `models...` names: the rule to route among the upstreams file's models
    upstream_keys.py an upstream's API key from a file, read again when it changes
    testing.py       ServerThread: a server in a background thread (tests, benchmarks)
    logs.py          structlog JSON configuration; LineWriter (a line it cannot write is counted, never
                     raised); LogSampler (bounded lines for floods)
    auth.py          bearer tokens (file re-read when it changes) and the tenant a token speaks for
    tls.py           certificate files for the gRPC port and the front, reloaded without a restart
    file_watch.py    FileStamps: whether files changed since last looked at (one stat each)
    malformed.py     request bytes that do not decode: a marker, answered INVALID_ARGUMENT (MALFORMED_REQUEST)
"""
