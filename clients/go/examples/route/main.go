// Example: route one prompt and score two, as in clients/go/README.md.
//
//	go run ./examples/route 127.0.0.1:50051
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"lmroute/clients/go/lmroute"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run ./examples/route HOST:PORT")
		os.Exit(2)
	}
	// run returns instead of exiting, so that its deferred Close and cancels run before the exit status is set
	if err := run(os.Args[1]); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func run(addr string) error {
	c, err := lmroute.New(addr, lmroute.Options{Timeout: 2 * time.Second}) // retries: DefaultRetryPolicy
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond) // this call's deadline
	defer cancel()
	d, err := c.Route(ctx, lmroute.RouteRequest("Prove that sqrt(2) is irrational.", "mf", lmroute.StrongShare(0.3)))
	switch {
	case status.Code(err) == codes.InvalidArgument:
		return fmt.Errorf("bad request (%s): %w", lmroute.Reason(err), err) // e.g. EMPTY_PROMPT, OUT_OF_RANGE
	case err != nil:
		return fmt.Errorf("route: %w", err) // overload that outlived the retries, deadline, ...
	}
	fmt.Println(d.GetChosenModel(), d.GetTier(), d.GetScore(), d.GetThreshold())

	s, err := c.Score(context.Background(), lmroute.ScoreRequest([]string{"hi", "Write a B-tree in Rust"}, "mf", "sw_ranking"))
	if err != nil {
		return err
	}
	for _, r := range s.GetResults() {
		fmt.Println(r.GetIndex(), r.GetStatus().GetCode(), r.GetScores())
	}
	return nil
}
