// Command gosdk drives our daprd with the official Dapr Go SDK (github.com/dapr/go-sdk, pinned
// in go.mod) for tests/tests/go_sdk.rs; scripts/test.sh builds it into .cache/gosdk/bin.
//
//	gosdk client [-app orders] [-service svc]
//
// connects with client.NewClientWithPort($DAPR_GRPC_PORT), invokes `-app` (an echo-app over
// HTTP behind its daprd; `-app ""` skips it) with InvokeMethod, InvokeMethodWithContent and
// InvokeMethodWithCustomContent as the SDK's service-invocation examples do, and, with
// `-service`, the app `gosdk serve` runs; its last line of stdout (the SDK logs there too) is
// one JSON object, each call's answer or error under its name.
//
//	gosdk serve
//
// runs a gRPC app with the SDK's service/grpc on a free loopback port, prints
// `gosdk-service listening on <addr>` once bound, and answers the method `echo` with what it
// received (data, content type, type URL, verb, query string) as JSON; `fail` answers an error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/dapr/go-sdk/client"
	"github.com/dapr/go-sdk/service/common"
	daprd "github.com/dapr/go-sdk/service/grpc"
	"google.golang.org/grpc/status"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gosdk client [-app ID] [-service ID] | gosdk serve")
		os.Exit(64)
	}
	var err error
	switch os.Args[1] {
	case "client":
		err = runClient(os.Args[2:])
	case "serve":
		err = serve()
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gosdk:", err)
		os.Exit(1)
	}
}

// result is one call as the SDK returned it.
type result struct {
	Body  string          `json:"body,omitempty"`
	JSON  json.RawMessage `json:"json,omitempty"`
	Error *callError      `json:"error,omitempty"`
}

// callError is the gRPC status the SDK's error carries.
type callError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Text    string `json:"text"`
}

func record(out []byte, err error) result {
	if err != nil {
		e := &callError{Code: "none", Text: err.Error()}
		if s, ok := status.FromError(err); ok {
			e.Code = s.Code().String()
			e.Message = s.Message()
		}
		return result{Error: e}
	}
	r := result{Body: string(out)}
	if json.Valid(out) && len(out) > 0 {
		r.JSON = out
	}
	return r
}

type order struct {
	ID    int    `json:"id"`
	Items string `json:"items"`
}

func runClient(args []string) error {
	flags := flag.NewFlagSet("client", flag.ContinueOnError)
	app := flags.String("app", "orders", "the app id of the echo-app behind daprd (empty: none)")
	service := flags.String("service", "", "the app id of `gosdk serve` behind daprd (optional)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	port := os.Getenv("DAPR_GRPC_PORT")
	c, err := client.NewClientWithPort(port)
	if err != nil {
		return fmt.Errorf("NewClientWithPort(%q): %w", port, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	text := &client.DataContent{ContentType: "text/plain", Data: []byte("hello from the go sdk")}
	custom := order{ID: 7, Items: "tea"}
	report := map[string]result{}

	if *app != "" {
		// What the echo-app saw (/inspect answers method, path, query, headers and body length)...
		report["inspect_content"] = record(c.InvokeMethodWithContent(ctx, *app, "inspect/items/7?color=red&size=2", "post", text))
		report["inspect_method"] = record(c.InvokeMethod(ctx, *app, "inspect/list?page=3", "get"))
		report["inspect_custom"] = record(c.InvokeMethodWithCustomContent(ctx, *app, "inspect/orders", "put", "application/json", custom))
		// ...and the data itself, echoed back.
		report["echo_content"] = record(c.InvokeMethodWithContent(ctx, *app, "echo/items", "post", text))
		report["echo_custom"] = record(c.InvokeMethodWithCustomContent(ctx, *app, "echo/orders", "post", "application/json", custom))
		// An app's error status.
		report["status_418"] = record(c.InvokeMethod(ctx, *app, "status/418", "get"))
		report["status_404"] = record(c.InvokeMethodWithContent(ctx, *app, "status/404", "post", text))
	}

	if *service != "" {
		report["service_content"] = record(c.InvokeMethodWithContent(ctx, *service, "echo?k=v", "post", text))
		report["service_custom"] = record(c.InvokeMethodWithCustomContent(ctx, *service, "echo", "put", "application/json", custom))
		report["service_method"] = record(c.InvokeMethod(ctx, *service, "echo?only=query", "get"))
		report["service_fail"] = record(c.InvokeMethod(ctx, *service, "fail", "post"))
		report["service_missing"] = record(c.InvokeMethod(ctx, *service, "nope", "post"))
	}
	return json.NewEncoder(os.Stdout).Encode(report)
}

// seen is what the service's handler received.
type seen struct {
	Data        string `json:"data"`
	ContentType string `json:"content_type"`
	TypeURL     string `json:"type_url"`
	Verb        string `json:"verb"`
	Query       string `json:"query"`
}

func serve() error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s := daprd.NewServiceWithListener(lis)
	echo := func(_ context.Context, in *common.InvocationEvent) (*common.Content, error) {
		body, err := json.Marshal(seen{
			Data:        string(in.Data),
			ContentType: in.ContentType,
			TypeURL:     in.DataTypeURL,
			Verb:        in.Verb,
			Query:       in.QueryString,
		})
		if err != nil {
			return nil, err
		}
		return &common.Content{ContentType: "application/json", Data: body}, nil
	}
	if err := s.AddServiceInvocationHandler("echo", echo); err != nil {
		return err
	}
	fail := func(context.Context, *common.InvocationEvent) (*common.Content, error) {
		return nil, errors.New("the go sdk service refuses")
	}
	if err := s.AddServiceInvocationHandler("fail", fail); err != nil {
		return err
	}
	fmt.Printf("gosdk-service listening on %s\n", lis.Addr())
	return s.Start()
}
