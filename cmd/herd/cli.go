package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// env holds what a command needs from its surroundings; tests build their own.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	logger         *slog.Logger
}

// command is one herd subcommand.
type command struct {
	name  string
	usage string // one line after "herd <name> "
	short string
	// flags registers the command's flags and returns the function that runs it after
	// parsing. The function returns the process exit status.
	flags func(fs *flag.FlagSet, e *env) func(ctx context.Context) error
	// raw, if set, replaces flag parsing: it gets the arguments after the command name
	// (for commands with subcommands).
	raw func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		demoCommand(),
		serveCommand(),
		rollupCommand(),
		agentCommand(),
		simCommand(),
		tailCommand(),
		detectCommand(),
		webCommand(),
		benchCommand(),
		{name: "version", short: "print herd's version", flags: func(fs *flag.FlagSet, e *env) func(context.Context) error {
			return func(context.Context) error {
				fmt.Fprintln(e.stdout, "herd", version)
				return nil
			}
		}},
	}
}

// errUsage marks an error that should print the command's usage.
var errUsage = errors.New("usage")

// errExit is an exit status already reported to the user.
type errExit int

func (e errExit) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// run runs herd with the arguments after the program name and returns the exit status.
// Help asked for goes to stdout (exit 0); usage errors go to stderr (exit 2).
func run(ctx context.Context, args []string, e *env) int {
	if e.logger == nil {
		e.logger = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if len(args) == 0 {
		topUsage(e.stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		topUsage(e.stdout)
		return 0
	case "-version", "--version":
		fmt.Fprintln(e.stdout, "herd", version)
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return runCommand(ctx, c, args[1:], e)
		}
	}
	fmt.Fprintf(e.stderr, "herd: unknown command %q\n\n", args[0])
	topUsage(e.stderr)
	return 2
}

// runCommand parses a command's flags (then the environment for the flags not given) and
// runs it.
func runCommand(ctx context.Context, c command, args []string, e *env) int {
	if c.raw != nil {
		return exitStatus(c.name, c.raw(ctx, e, args), e)
	}
	fs := flag.NewFlagSet("herd "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and usage are printed below, once
	runFn := c.flags(fs, e)
	logFormat := fs.String("log.format", "text", "log `format` on stderr: text or json (log/slog's handlers, one record a line)")
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "usage: herd %s %s\n\n%s.\n\nFlags (each falls back to the environment variable shown):\n", c.name, c.usage, capitalize(c.short))
		printFlags(w, fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(e.stdout)
			return 0
		}
		fmt.Fprintf(e.stderr, "herd %s: %v\n\n", c.name, err)
		usage(e.stderr)
		return 2
	}
	if err := applyEnv(fs, e.getenv); err != nil {
		fmt.Fprintf(e.stderr, "herd %s: %v\n", c.name, err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "herd %s: unexpected arguments %q\n", c.name, fs.Args())
		return 2
	}
	switch *logFormat {
	case "text": // the logger run made, or the caller's
	case "json":
		e.logger = slog.New(slog.NewJSONHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	default:
		fmt.Fprintf(e.stderr, "herd %s: -log.format %q: want text or json\n", c.name, *logFormat)
		return 2
	}
	return exitStatus(c.name, runFn(ctx), e)
}

// exitStatus reports err and maps it to an exit status: 0 ok, 2 usage, 1 anything else.
func exitStatus(name string, err error, e *env) int {
	var code errExit
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	case errors.Is(err, errUsage):
		if err != errUsage {
			fmt.Fprintf(e.stderr, "herd %s: %v\n", name, err)
		}
		return 2
	}
	fmt.Fprintf(e.stderr, "herd %s: %v\n", name, err)
	return 1
}

func topUsage(w io.Writer) {
	fmt.Fprintf(w, "herd %s: is the version you just pushed worse than the one it replaces?\n\nusage: herd <command> [flags]\n\ncommands:\n", version)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.short)
	}
	fmt.Fprintln(w, "\nRun 'herd <command> --help' for a command's flags, 'herd --version' for the version.")
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// envName is the environment variable a flag falls back to: HERD_ + upper case, with '.' and
// '-' as '_' (rollup.window → HERD_ROLLUP_WINDOW).
func envName(flagName string) string {
	return "HERD_" + strings.NewReplacer(".", "_", "-", "_").Replace(strings.ToUpper(flagName))
}

// applyEnv sets every flag not given on the command line from its environment variable.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("invalid value %q for %s (-%s): %w", v, envName(f.Name), f.Name, e)
			}
		}
	})
	return err
}

func printFlags(w io.Writer, fs *flag.FlagSet) {
	var lines []string
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		l := "  --" + f.Name
		if name != "" {
			l += " " + name
		}
		l += "  [" + envName(f.Name) + "]\n      " + usage
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "[]" {
			l += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		lines = append(lines, l)
	})
	sort.Strings(lines)
	fmt.Fprintln(w, strings.Join(lines, "\n"))
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

// Set appends one value (a comma-separated value from the environment adds several).
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func osEnv() *env {
	return &env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
}
