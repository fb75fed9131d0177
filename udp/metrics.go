package udp

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// counters are one socket's statistics. The socket's loop updates them; the
// collector reads them at scrape time.
type counters struct {
	rxDatagrams atomic.Uint64
	rxBytes     atomic.Uint64
	txDatagrams atomic.Uint64
	txBytes     atomic.Uint64
	drops       atomic.Uint64 // kernel drops, from SO_RXQ_OVFL
	truncated   atomic.Uint64
	wouldBlock  atomic.Uint64 // datagrams refused with ErrWouldBlock
	sendErrors  atomic.Uint64 // datagrams refused for any other error
	errorsRecv  atomic.Uint64 // ErrorReceived events
	sysRecvmsg  atomic.Uint64
	sysRecvmmsg atomic.Uint64
	sysSendmsg  atomic.Uint64
	sysSendmmsg atomic.Uint64
	sysGSO      atomic.Uint64
	opened      atomic.Uint64 // only in ext.closed: sockets ever opened
}

func (c *counters) addFrom(o *counters) {
	c.rxDatagrams.Add(o.rxDatagrams.Load())
	c.rxBytes.Add(o.rxBytes.Load())
	c.txDatagrams.Add(o.txDatagrams.Load())
	c.txBytes.Add(o.txBytes.Load())
	c.drops.Add(o.drops.Load())
	c.truncated.Add(o.truncated.Load())
	c.wouldBlock.Add(o.wouldBlock.Load())
	c.sendErrors.Add(o.sendErrors.Load())
	c.errorsRecv.Add(o.errorsRecv.Load())
	c.sysRecvmsg.Add(o.sysRecvmsg.Load())
	c.sysRecvmmsg.Add(o.sysRecvmmsg.Load())
	c.sysSendmsg.Add(o.sysSendmsg.Load())
	c.sysSendmmsg.Add(o.sysSendmmsg.Load())
	c.sysGSO.Add(o.sysGSO.Load())
}

var (
	descRxDatagrams = prometheus.NewDesc("ioactor_udp_datagrams_received_total", "Datagrams read from UDP sockets and delivered to handlers.", nil, nil)
	descRxBytes     = prometheus.NewDesc("ioactor_udp_received_bytes_total", "Payload bytes of the datagrams delivered to handlers.", nil, nil)
	descTxDatagrams = prometheus.NewDesc("ioactor_udp_datagrams_sent_total", "Datagrams handed to the kernel.", nil, nil)
	descTxBytes     = prometheus.NewDesc("ioactor_udp_sent_bytes_total", "Payload bytes handed to the kernel.", nil, nil)
	descDrops       = prometheus.NewDesc("ioactor_udp_kernel_drops_total", "Datagrams the kernel dropped because a socket's receive queue was full (SO_RXQ_OVFL; seen with the next datagram read).", nil, nil)
	descTruncated   = prometheus.NewDesc("ioactor_udp_datagrams_truncated_total", "Datagrams longer than the socket's MaxDatagramSize, dropped.", nil, nil)
	descSendFailed  = prometheus.NewDesc("ioactor_udp_send_failures_total", "Datagrams a socket could not send.", []string{"reason"}, nil)
	descErrorsRecv  = prometheus.NewDesc("ioactor_udp_errors_received_total", "Errors the kernel queued on sockets (ICMP), delivered as ErrorReceived.", nil, nil)
	descSyscalls    = prometheus.NewDesc("ioactor_udp_syscalls_total", "Receive and send system calls made by UDP sockets.", []string{"op"}, nil)
	descOpen        = prometheus.NewDesc("ioactor_udp_sockets_open", "UDP sockets open.", nil, nil)
	descOpened      = prometheus.NewDesc("ioactor_udp_sockets_opened_total", "UDP sockets opened.", nil, nil)
)

// collector is the package's per-system Prometheus collector.
type collector struct{ e *ext }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRxDatagrams, descRxBytes, descTxDatagrams, descTxBytes, descDrops,
		descTruncated, descSendFailed, descErrorsRecv, descSyscalls, descOpen, descOpened} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var t counters
	c.e.mu.Lock()
	t.addFrom(&c.e.closed)
	for s := range c.e.socks {
		t.addFrom(&s.c)
	}
	open := len(c.e.socks)
	opened := c.e.closed.opened.Load()
	c.e.mu.Unlock()
	counter := func(d *prometheus.Desc, v *atomic.Uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v.Load()), labels...)
	}
	counter(descRxDatagrams, &t.rxDatagrams)
	counter(descRxBytes, &t.rxBytes)
	counter(descTxDatagrams, &t.txDatagrams)
	counter(descTxBytes, &t.txBytes)
	counter(descDrops, &t.drops)
	counter(descTruncated, &t.truncated)
	counter(descSendFailed, &t.wouldBlock, "would_block")
	counter(descSendFailed, &t.sendErrors, "error")
	counter(descErrorsRecv, &t.errorsRecv)
	counter(descSyscalls, &t.sysRecvmsg, "recvmsg")
	counter(descSyscalls, &t.sysRecvmmsg, "recvmmsg")
	counter(descSyscalls, &t.sysSendmsg, "sendmsg")
	counter(descSyscalls, &t.sysSendmmsg, "sendmmsg")
	counter(descSyscalls, &t.sysGSO, "sendmsg_gso")
	ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(open))
	ch <- prometheus.MustNewConstMetric(descOpened, prometheus.CounterValue, float64(opened))
}
