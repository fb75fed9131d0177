package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/internal/vip"
	"github.com/ioactor/ioactor/tftp/cluster"
)

// vipFlags are the -vip flags: the virtual IPs the leader holds.
type vipFlags []netip.Prefix

func (v *vipFlags) String() string {
	var s []string
	for _, p := range *v {
		s = append(s, p.String())
	}
	return strings.Join(s, ",")
}

func (v *vipFlags) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("want ADDR/PREFIX (10.0.0.100/24, fd00::100/64): %w", err)
	}
	*v = append(*v, p)
	return nil
}

// vipOptions are the flags of the virtual IP.
type vipOptions struct {
	vips     vipFlags
	iface    string
	lifetime time.Duration
}

func (o *vipOptions) register(fs *flag.FlagSet) {
	fs.Var(&o.vips, "vip", "cluster: a virtual IP ADDR/PREFIX the leader adds to -vip-interface, announces and serves TFTP on (repeatable: one IPv4, one IPv6); needs CAP_NET_ADMIN and CAP_NET_RAW")
	fs.StringVar(&o.iface, "vip-interface", "", "cluster: the interface the -vip addresses go on (required with -vip)")
	fs.DurationVar(&o.lifetime, "vip-lifetime", vip.DefaultLifetime, "cluster: the -vip addresses' kernel lifetime, renewed by the leader every third of it: a copy left by a killed or frozen leader is gone within it (plus about 1 s)")
}

// vipListen checks the -vip flags against -listen and returns the TFTP
// address: -listen when given (its address must be one of the VIPs), else
// the first VIP, port 69.
func vipListen(o *vipOptions, listen netip.AddrPort, listenSet, clustered bool) (netip.AddrPort, error) {
	if len(o.vips) == 0 {
		if o.iface != "" {
			return listen, fmt.Errorf("-vip-interface without -vip")
		}
		return listen, nil
	}
	if !clustered {
		return listen, fmt.Errorf("-vip needs -cluster")
	}
	if o.iface == "" {
		return listen, fmt.Errorf("-vip needs -vip-interface")
	}
	if !listenSet {
		return netip.AddrPortFrom(o.vips[0].Addr(), 69), nil
	}
	for _, p := range o.vips {
		if p.Addr() == listen.Addr() {
			return listen, nil
		}
	}
	return listen, fmt.Errorf("-listen %v: with -vip the TFTP port is on a virtual IP (%v)", listen, o.vips.String())
}

// vipAddress is the cluster.Address of the -vip flags.
type vipAddress struct{ *vip.Manager }

func (a vipAddress) status() []cluster.AddressStatus {
	var out []cluster.AddressStatus
	for _, s := range a.Status() {
		out = append(out, cluster.AddressStatus{Addr: s.Addr, Interface: s.Interface, Held: s.Held, Owner: s.Owner, ValidLifetime: s.ValidLifetime})
	}
	return out
}

// newVIP makes the manager of the -vip flags; nil when there are none.
func newVIP(o *vipOptions, node *cluster.Node, logger *slog.Logger, reg prometheus.Registerer) (*vipAddress, error) {
	if len(o.vips) == 0 {
		return nil, nil
	}
	m, err := vip.New(vip.Config{Interface: o.iface, Prefixes: o.vips, Lifetime: o.lifetime,
		StillOwner: node.IsLeader, Logger: logger, Registerer: reg})
	if err != nil {
		return nil, err
	}
	a := &vipAddress{m}
	node.SetAddressStatus(a.status)
	return a, nil
}

// printVIPHolders asks every member in st (the /status JSON of one node)
// for its own /status and prints, per virtual IP, which nodes' hosts hold
// it: exactly one (the leader) when all is well.
func printVIPHolders(ctx context.Context, body []byte, scheme string, client *http.Client, stdout io.Writer) {
	var st struct {
		Members []cluster.Member `json:"members"`
	}
	if json.Unmarshal(body, &st) != nil || len(st.Members) == 0 {
		return
	}
	type held struct{ ids []string }
	byAddr := map[string]*held{}
	var order []string
	for _, m := range st.Members {
		var ms cluster.Status
		err := func() error {
			ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+m.HTTPAddr+"/status", nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			return json.NewDecoder(resp.Body).Decode(&ms)
		}()
		if err != nil {
			fmt.Fprintf(stdout, "vip: %s (%s) did not answer: %v\n", m.ID, m.HTTPAddr, err)
			continue
		}
		for _, v := range ms.VIPs {
			h := byAddr[v.Addr]
			if h == nil {
				h = &held{}
				byAddr[v.Addr] = h
				order = append(order, v.Addr)
			}
			if v.Held {
				h.ids = append(h.ids, fmt.Sprintf("%s (%s, %s, valid %ds)", m.ID, ms.State, v.Interface, v.ValidLifetime))
			}
		}
	}
	for _, a := range order {
		h := byAddr[a]
		switch len(h.ids) {
		case 0:
			fmt.Fprintf(stdout, "vip %s: held by no node\n", a)
		default:
			fmt.Fprintf(stdout, "vip %s: held by %s\n", a, strings.Join(h.ids, ", "))
		}
	}
}
