package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Main is the vllm-router command line: parse flags, start, serve until SIGINT/SIGTERM,
// drain, exit. It returns the process exit code: 0 after a clean drain, 2 for bad flags,
// 1 for anything else.
func Main(args []string, stdout, stderr io.Writer) int {
	cfg, err := ParseFlags(args, stdout)
	if errors.Is(err, ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "vllm-router: error: %v\n", err)
		fmt.Fprintln(stderr, "run with --help for the flags")
		return 2
	}
	log, err := NewLogger(cfg.LogLevel, cfg.LogDir, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "vllm-router: error: %v\n", err)
		return 2
	}
	defer log.Sync() //nolint:errcheck
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := New(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "vllm-router: error: %v\n", err)
		return 2
	}
	if err := srv.Run(ctx); err != nil {
		log.Error("router stopped", zap.Error(err))
		return 1
	}
	return 0
}

// StartArgs starts a router from vllm-router arguments and returns it serving; the caller
// shuts it down. The demo and the launcher embed the router this way.
func StartArgs(args []string, log *zap.Logger) (*Server, error) {
	cfg, err := ParseFlags(args, io.Discard)
	if err != nil {
		return nil, err
	}
	srv, err := New(cfg, log)
	if err != nil {
		return nil, err
	}
	return srv, srv.Start()
}

// NewLogger builds the zap logger for a --log-level (vllm-router's names) writing to w,
// and also to dir/vllm-router.log when dir is set.
func NewLogger(level, dir string, w io.Writer) (*zap.Logger, error) {
	var lvl zapcore.Level
	switch strings.ToLower(level) {
	case "debug":
		lvl = zapcore.DebugLevel
	case "info", "":
		lvl = zapcore.InfoLevel
	case "warn", "warning":
		lvl = zapcore.WarnLevel
	case "error":
		lvl = zapcore.ErrorLevel
	case "critical":
		lvl = zapcore.DPanicLevel
	default:
		return nil, fmt.Errorf("--log-level %q: must be debug, info, warning, error or critical", level)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	cores := []zapcore.Core{zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(w), lvl)}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("--log-dir: %w", err)
		}
		f, err := os.OpenFile(filepath.Join(dir, "vllm-router.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, fmt.Errorf("--log-dir: %w", err)
		}
		cores = append(cores, zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(f), lvl))
	}
	return zap.New(zapcore.NewTee(cores...)), nil
}
