package observe

import (
	"maps"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/udpgate/udpgate/dtls"
	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/lambda"
)

// LatencyBuckets are the buckets of the latency histograms, in seconds:
// 0.5 ms to 10 s.
var LatencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewRegistry returns a registry with the Go runtime and process
// collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Drop reasons of udpgate_datagrams_dropped_total.
const (
	ReasonRcvbufOverflow = "rcvbuf_overflow"
	ReasonTooLarge       = "too_large"
	ReasonMalformed      = "malformed"
	ReasonQueueFull      = "queue_full"
	ReasonTableFull      = "table_full"
	ReasonListenerFull   = "listener_full"
	ReasonNATSDown       = "nats_down"
	ReasonPublishFailed  = "publish_failed"
	// ReasonCaptureGap counts capture copies that JetStream refused or
	// did not acknowledge, or that found MaxInFlight awaiting it: not a
	// dropped request (direct groups had it), a gap in the capture.
	ReasonCaptureGap = "capture_gap"
	ReasonNoAnswer   = "no_answer"
	// ReasonNoWorker counts raw requests no group serves, released at once.
	ReasonNoWorker       = "no_worker"
	ReasonLateReply      = "late_reply"
	ReasonDuplicateReply = "duplicate_reply"
	ReasonSendError      = "send_error"
	ReasonDenied         = "denied"
	ReasonNotAllowed     = "not_allowed"
	ReasonRateLimited    = "rate_limited"
	ReasonGlobalLimited  = "global_limited"
	ReasonAmplification  = "amplification"
)

var (
	listenerLabels = []string{"port", "protocol"}

	descReceived = prometheus.NewDesc("udpgate_datagrams_received_total",
		"Datagrams read from the listener socket.", listenerLabels, nil)
	descPublished = prometheus.NewDesc("udpgate_datagrams_published_total",
		"Requests published to direct worker groups (core NATS).", listenerLabels, nil)
	descCaptured = prometheus.NewDesc("udpgate_datagrams_captured_total",
		"Capture copies stored by JetStream (acknowledged).", listenerLabels, nil)
	descRepublished = prometheus.NewDesc("udpgate_datagrams_republished_total",
		"CoAP requests published again to direct groups because the client retransmitted them unanswered.", listenerLabels, nil)
	descNoResponders = prometheus.NewDesc("udpgate_requests_no_responders_total",
		"Requests no direct worker group received (NATS answered no responders); durable groups may still answer.", listenerLabels, nil)
	descAnswered = prometheus.NewDesc("udpgate_datagrams_answered_total",
		"Workers' replies sent to clients.", listenerLabels, nil)
	descDropped = prometheus.NewDesc("udpgate_datagrams_dropped_total",
		"Datagrams (and, for late_reply and duplicate_reply, workers' replies) dropped, by reason.",
		[]string{"port", "protocol", "reason"}, nil)
	descDoorShed = prometheus.NewDesc("udpgate_requests_shed_total",
		"Requests the gateway shed at the door for an overloaded durable group: answered at once with the overload status (raw: dropped), captured, not published.", listenerLabels, nil)
	descMulticast = prometheus.NewDesc("udpgate_multicast_requests_total",
		"Datagrams sent to a multicast group the listener joined (group=), answered from its unicast address.", listenerLabels, nil)
	descBroadcast = prometheus.NewDesc("udpgate_broadcast_requests_total",
		"Datagrams sent to a broadcast address, answered from the listener's unicast address.", listenerLabels, nil)
	descMulticastSuppressed = prometheus.NewDesc("udpgate_multicast_errors_suppressed_total",
		"CoAP error responses (4.xx, 5.xx) not sent because the request came to a multicast group or broadcast address (RFC 7252 §8.2).", listenerLabels, nil)
	descTooBig = prometheus.NewDesc("udpgate_replies_too_big_total",
		"Replies the kernel refused as larger than the path MTU on a listener that forbids fragmentation (df=on): not sent.", listenerLabels, nil)
	descWorkerErrors = prometheus.NewDesc("udpgate_worker_error_replies_total",
		"Replies with udpgate-status error (raw listeners send nothing for them).", listenerLabels, nil)
	descReadErrors = prometheus.NewDesc("udpgate_read_errors_total",
		"Socket read errors other than closing.", listenerLabels, nil)
	descCoAP = prometheus.NewDesc("udpgate_coap_messages_total",
		"Messages of a CoAP listener's messaging layer, by kind.", []string{"port", "kind"}, nil)
	descObservers = prometheus.NewDesc("udpgate_coap_observers",
		"CoAP Observe registrations a coap listener holds now.", []string{"port"}, nil)
	descObserveRegistrations = prometheus.NewDesc("udpgate_coap_observe_registrations_total",
		"CoAP Observe registrations kept (the worker accepted them).", []string{"port"}, nil)
	descObserveEnds = prometheus.NewDesc("udpgate_coap_observe_deregistrations_total",
		"CoAP Observe registrations ended, or refused (refused_full), by reason.", []string{"port", "reason"}, nil)
	descNotifications = prometheus.NewDesc("udpgate_coap_notifications_total",
		"CoAP Observe notifications sent, by message type (non, con).", []string{"port", "type"}, nil)
	descRPC = prometheus.NewDesc("udpgate_rpc_replies_total",
		"Reply envelopes of an rpc listener, by kind.", []string{"port", "kind"}, nil)
	descCut = prometheus.NewDesc("udpgate_replies_cut_total",
		"Replies to unvalidated sources cut to fit the amplification limit (CoAP: smaller Block2 blocks, or 4.01 with an Echo).", listenerLabels, nil)
	descValidated = prometheus.NewDesc("udpgate_sources_validated_total",
		"Sources that showed they receive at their address (CoAP Echo, acknowledged separate response).", listenerLabels, nil)
	descBuckets = prometheus.NewDesc("udpgate_source_buckets",
		"Per-source rate-limit buckets in use.", listenerLabels, nil)
	descBucketsCap = prometheus.NewDesc("udpgate_source_buckets_capacity",
		"Size of the per-source rate-limit table (0: no per-source limit).", listenerLabels, nil)
	descEvictions = prometheus.NewDesc("udpgate_source_bucket_evictions_total",
		"Per-source buckets reused for another source because the table was full.", listenerLabels, nil)
	descUnknown = prometheus.NewDesc("udpgate_replies_unknown_total",
		"Workers' replies naming no exchange of this process.", nil, nil)
	descPending = prometheus.NewDesc("udpgate_pending_exchanges",
		"Requests awaiting their reply.", nil, nil)
	descCapacity = prometheus.NewDesc("udpgate_pending_exchanges_capacity",
		"Size of the pending-exchange table.", nil, nil)
	descListenerPending = prometheus.NewDesc("udpgate_listener_pending_exchanges",
		"Requests of this listener awaiting their reply.", listenerLabels, nil)
	descListenerPendingMax = prometheus.NewDesc("udpgate_listener_pending_exchanges_max",
		"The most exchanges this listener may hold open (UDPGATE_LISTENER_MAX_PENDING); 0: only the table's size.", listenerLabels, nil)
	descDrains = prometheus.NewDesc("udpgate_gateway_drains_total",
		"Graceful stops begun: the gateway stopped reading and answered its pending exchanges.", nil, nil)
	descDrainLeft = prometheus.NewDesc("udpgate_gateway_drain_left_total",
		"Exchanges still open when a graceful stop reached UDPGATE_DRAIN_TIMEOUT.", nil, nil)
	descListenersAdded = prometheus.NewDesc("udpgate_listeners_added_total",
		"Listeners added while the gateway served (the listener file's, leased ones).", nil, nil)
	descListenersRemoved = prometheus.NewDesc("udpgate_listeners_removed_total",
		"Listeners removed while the gateway served: each stopped reading, answered its pending requests, then closed.", nil, nil)
	descRecreated = prometheus.NewDesc("udpgate_streams_recreated_total",
		"Streams found missing after a reconnection to NATS (a server back without its store) and created again.", nil, nil)
	descUnserved = prometheus.NewDesc("udpgate_requests_unserved_total",
		"CoAP and RPC requests no worker group serves, answered at once by the gateway (4.04, 4.05, STATUS_UNIMPLEMENTED).", listenerLabels, nil)
	descCaptureRetries = prometheus.NewDesc("udpgate_capture_retries_total",
		"Capture copies published again because JetStream did not acknowledge or refused the previous try (a stream electing its leader).", listenerLabels, nil)
	descFallback = prometheus.NewDesc("udpgate_capture_fallback_total",
		"Requests published to their fallback subject (PREFIX.fallback.…) for durable groups, because JetStream did not take their capture copy at the first try.", listenerLabels, nil)
	descCaptureDiscarded = prometheus.NewDesc("udpgate_capture_discarded_total",
		"Requests that reached their deadline unanswered after the capture stream's limits (max bytes, max age) had removed them before a durable worker took them; each is also counted as dropped no_answer.", listenerLabels, nil)
	descDiscovery = prometheus.NewDesc("udpgate_coap_discovery_total",
		"CoAP resource discovery requests (GET /.well-known/core) no group serves, answered by the gateway from the groups' resources.", listenerLabels, nil)

	// A ws listener's connections and messages.
	descWSConnections = prometheus.NewDesc("udpgate_ws_connections",
		"WebSocket connections of a ws listener open now.", listenerLabels, nil)
	descWSAccepted = prometheus.NewDesc("udpgate_ws_connections_accepted_total",
		"WebSocket upgrades a ws listener accepted.", listenerLabels, nil)
	descWSRefused = prometheus.NewDesc("udpgate_ws_upgrades_refused_total",
		"HTTP requests a ws listener refused, by reason: origin (403), full (503, the connection cap), not_websocket (no valid upgrade, or another path), connect (upgraded, then closed by a $connect reply), source (403, the guard's allow and deny lists), rate (429, over the guard's rate).",
		[]string{"port", "protocol", "reason"}, nil)
	descWSIn = prometheus.NewDesc("udpgate_ws_messages_received_total",
		"Data messages read from a ws listener's connections.", listenerLabels, nil)
	descWSOut = prometheus.NewDesc("udpgate_ws_messages_sent_total",
		"Reply messages written to a ws listener's connections.", listenerLabels, nil)
	descWSRejected = prometheus.NewDesc("udpgate_ws_messages_rejected_total",
		"Messages of a ws listener that closed their connection, by reason: too_large (1009), bad_base64 and malformed (1007).",
		[]string{"port", "protocol", "reason"}, nil)
	descWSBusy = prometheus.NewDesc("udpgate_ws_calls_busy_total",
		"Calls answered STATUS_RESOURCE_EXHAUSTED, unpublished, because their connection had its limit of calls in flight.", listenerLabels, nil)
	descWSClosed = prometheus.NewDesc("udpgate_ws_connections_closed_total",
		"Connections a ws listener closed, by reason: idle (no message for the idle time), no_pong (a ping unanswered), slow (its pushes unread, beyond the queue), worker (a worker's close).",
		[]string{"port", "protocol", "reason"}, nil)
	descWSDropped = prometheus.NewDesc("udpgate_ws_replies_dropped_total",
		"Replies of a ws listener not written: their connection had closed.", listenerLabels, nil)
	descWSRateLimited = prometheus.NewDesc("udpgate_ws_calls_rate_limited_total",
		"Calls answered STATUS_RESOURCE_EXHAUSTED, unpublished, because their source (the guard's rate) or their connection (UDPGATE_WS_CONN_RATE) was over its rate.", listenerLabels, nil)
	descWSSReloads = prometheus.NewDesc("udpgate_wss_certificate_reloads_total",
		"A wss listener's certificate loaded again after its files changed (outcome loaded), or a change that did not load, the previous certificate kept (failed).",
		[]string{"port", "protocol", "outcome"}, nil)
	descPushes = prometheus.NewDesc("udpgate_pushes_sent_total",
		"Unsolicited datagrams workers pushed (PREFIX.out.NODE.PORT) that a push=on raw listener sent.", listenerLabels, nil)
	descPushRefused = prometheus.NewDesc("udpgate_pushes_refused_total",
		"Unsolicited datagrams a push=on raw listener refused, by reason.", append(listenerLabels[:len(listenerLabels):len(listenerLabels)], "reason"), nil)
	descMore = prometheus.NewDesc("udpgate_replies_more_total",
		"Replies with more to follow (udpgate-more): sent with the exchange kept open, or final on a listener that answers once.", append(listenerLabels[:len(listenerLabels):len(listenerLabels)], "kind"), nil)
	descWSPushes = prometheus.NewDesc("udpgate_ws_pushes_total",
		"Messages workers pushed to a ws listener's connections (PREFIX.ws.CONNECTION.push) that were written.", listenerLabels, nil)
	descWSPushRefused = prometheus.NewDesc("udpgate_ws_pushes_refused_total",
		"Pushes and closes a ws listener refused: unknown or closed connection, too large, not UTF-8 text, a bad operation or close code, or a full queue.", listenerLabels, nil)
	descWSEvents = prometheus.NewDesc("udpgate_ws_events_total",
		"Connection events ($connect, $disconnect) a ws listener published.", listenerLabels, nil)
	descWSEventsUncaptured = prometheus.NewDesc("udpgate_ws_events_capture_failed_total",
		"Connection events whose capture copy JetStream refused or did not acknowledge: a gap in the capture.", listenerLabels, nil)

	// A worker group as the gateway sees it, from its latest discovery:
	// gauges, since a group's figures fall when an instance leaves.
	descGroupInstances = prometheus.NewDesc("udpgate_worker_instances",
		"Instances of a worker group that answered the gateway's latest discovery (NATS service discovery); 0 for a durable group known only from its consumer.",
		[]string{"group", "delivery"}, nil)
	descGroupRequests = prometheus.NewDesc("udpgate_worker_group_requests",
		"Requests the live instances of an announced worker group have handled, as they announce them.", []string{"group"}, nil)
	descGroupErrors = prometheus.NewDesc("udpgate_worker_group_errors",
		"Requests the live instances of an announced worker group have failed, as they announce them.", []string{"group"}, nil)
	descGroupProcessing = prometheus.NewDesc("udpgate_worker_group_processing_seconds",
		"Mean time the live instances of an announced worker group took to handle a request.", []string{"group"}, nil)

	descNATSConnected = prometheus.NewDesc("udpgate_nats_connected",
		"1 if the NATS connection is up, else 0.", nil, nil)
	descNATSStatus = prometheus.NewDesc("udpgate_nats_connection_status",
		"The NATS connection's status: 1 for the current one.", []string{"status"}, nil)
	descNATSReconnects = prometheus.NewDesc("udpgate_nats_reconnects_total",
		"Reconnections to NATS.", nil, nil)
)

// The metrics of coaps and dtls listeners (package dtls).
var (
	descDTLSHandshakes = prometheus.NewDesc("udpgate_dtls_handshakes_total",
		"DTLS handshakes of a coaps or dtls listener, by outcome (ok; refused: unknown_identity, bad_key, bad_certificate, timeout, failed; not started: rate_limited, table_full).", []string{"port", "outcome"}, nil)
	descDTLSSessions = prometheus.NewDesc("udpgate_dtls_sessions",
		"DTLS sessions a coaps or dtls listener holds now, by state (handshaking, established).", []string{"port", "state"}, nil)
	descDTLSRebinds = prometheus.NewDesc("udpgate_dtls_rebinds_total",
		"DTLS sessions that moved to a new client address, found by their Connection ID (RFC 9146).", []string{"port"}, nil)
	descDTLSExpired = prometheus.NewDesc("udpgate_dtls_sessions_expired_total",
		"DTLS sessions closed for sending nothing for UDPGATE_DTLS_IDLE.", []string{"port"}, nil)
	descDTLSReplaced = prometheus.NewDesc("udpgate_dtls_sessions_replaced_total",
		"DTLS sessions closed because their client shook hands again from the same address (a restart) and passed the cookie exchange.", []string{"port"}, nil)
	descDTLSDropped = prometheus.NewDesc("udpgate_dtls_records_dropped_total",
		"Datagrams of a coaps or dtls listener dropped before decryption, by reason (no_session: not a ClientHello and no session's; backlog: the session's queue was full).", []string{"port", "reason"}, nil)
	descDTLSKeyReloads = prometheus.NewDesc("udpgate_dtls_psk_reloads_total",
		"The PSK file (UDPGATE_DTLS_PSK_FILE) read again after a change (loaded), or a look that failed (failed: the keys in use stay, and an error is logged).", []string{"port", "outcome"}, nil)
)

// collectDTLS sends the metrics of the coaps and dtls listeners in st.
func collectDTLS(ch chan<- prometheus.Metric, st gateway.Stats) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for name, ds := range st.DTLS {
		p, _, _ := schemas.ParseListener(name)
		port := strconv.Itoa(int(p))
		for _, o := range dtls.Outcomes {
			counter(descDTLSHandshakes, ds.Handshakes[o], port, o)
		}
		ch <- prometheus.MustNewConstMetric(descDTLSSessions, prometheus.GaugeValue, float64(ds.Handshaking), port, "handshaking")
		ch <- prometheus.MustNewConstMetric(descDTLSSessions, prometheus.GaugeValue, float64(ds.Sessions-ds.Handshaking), port, "established")
		counter(descDTLSRebinds, ds.Rebinds, port)
		counter(descDTLSExpired, ds.Expired, port)
		counter(descDTLSReplaced, ds.Replaced, port)
		counter(descDTLSDropped, ds.NoSession, port, "no_session")
		counter(descDTLSDropped, ds.Backlog, port, "backlog")
		counter(descDTLSKeyReloads, ds.KeyReloads, port, "loaded")
		counter(descDTLSKeyReloads, ds.KeyReloadFailed, port, "failed")
	}
}

// gatewayCollector reads a gateway's counters, and the worker groups it
// knows, at scrape time.
type gatewayCollector struct{ g *gateway.Gateway }

func (c gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReceived, descPublished, descDoorShed, descCaptured, descRepublished, descNoResponders, descAnswered, descDropped, descWorkerErrors,
		descReadErrors, descCoAP, descObservers, descObserveRegistrations, descObserveEnds, descNotifications, descRPC, descUnknown, descPending, descCapacity, descRecreated, descDrains, descDrainLeft, descListenerPending, descListenerPendingMax,
		descListenersAdded, descListenersRemoved,
		descCut, descValidated, descBuckets, descBucketsCap, descEvictions, descUnserved, descDiscovery, descCaptureRetries, descFallback, descCaptureDiscarded,
		descWSConnections, descWSAccepted, descWSRefused, descWSIn, descWSOut, descWSRejected, descWSBusy, descWSClosed, descWSDropped,
		descPushes, descPushRefused, descMore, descMulticast, descBroadcast, descMulticastSuppressed, descTooBig,
		descWSPushes, descWSPushRefused, descWSRateLimited, descWSSReloads, descWSEvents, descWSEventsUncaptured,
		descGroupInstances, descGroupRequests, descGroupErrors, descGroupProcessing} {
		ch <- d
	}
	for _, d := range []*prometheus.Desc{descDTLSHandshakes, descDTLSSessions, descDTLSRebinds, descDTLSExpired, descDTLSReplaced, descDTLSDropped, descDTLSKeyReloads} {
		ch <- d
	}
	for _, d := range observeBucketDescs {
		ch <- d
	}
}

func (c gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.g.Stats()
	collectDTLS(ch, st)
	collectObserveBucket(ch, st)
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for name, in := range st.Ingress {
		p, protocol, _ := schemas.ParseListener(name)
		port := strconv.Itoa(int(p))
		eg := st.EgressByListener[name]
		counter(descReceived, in.Received, port, protocol)
		counter(descPublished, in.Published, port, protocol)
		counter(descDoorShed, in.Shed, port, protocol)
		counter(descCaptured, in.Captured, port, protocol)
		counter(descCaptureRetries, in.CaptureRetried, port, protocol)
		counter(descFallback, in.Fallback, port, protocol)
		counter(descCaptureDiscarded, st.CaptureDiscarded[name], port, protocol)
		counter(descRepublished, in.Republished, port, protocol)
		counter(descNoResponders, eg.NoResponders, port, protocol)
		counter(descUnserved, eg.Unserved, port, protocol)
		counter(descDiscovery, eg.Discovery, port, protocol)
		counter(descAnswered, eg.Sent, port, protocol)
		counter(descWorkerErrors, eg.WorkerError, port, protocol)
		counter(descReadErrors, in.ReadErrors, port, protocol)
		counter(descMulticast, in.Multicast, port, protocol)
		counter(descBroadcast, in.Broadcast, port, protocol)
		counter(descMulticastSuppressed, st.CoAP[name].MulticastSuppressed, port, protocol)
		counter(descTooBig, in.TooBig, port, protocol)
		counter(descMore, eg.More, port, protocol, "sent")
		counter(descMore, eg.MoreRefused, port, protocol, "final")
		if o, ok := st.Out[name]; ok {
			counter(descPushes, o.Sent, port, protocol)
			for _, r := range schemas.OutErrors {
				counter(descPushRefused, o.Refused[r], port, protocol, r)
			}
		}
		malformed := st.CoAP[name].Malformed + st.RPC[name].Malformed
		gs := st.Guard[name] // zero for a listener without a guard
		counter(descCut, gs.Cut, port, protocol)
		counter(descValidated, gs.Validations, port, protocol)
		counter(descEvictions, gs.Evictions, port, protocol)
		ch <- prometheus.MustNewConstMetric(descListenerPending, prometheus.GaugeValue, float64(in.Pending), port, protocol)
		ch <- prometheus.MustNewConstMetric(descListenerPendingMax, prometheus.GaugeValue, float64(in.PendingLimit), port, protocol)
		ch <- prometheus.MustNewConstMetric(descBuckets, prometheus.GaugeValue, float64(gs.Sources), port, protocol)
		ch <- prometheus.MustNewConstMetric(descBucketsCap, prometheus.GaugeValue, float64(gs.SourceCapacity), port, protocol)
		for _, r := range []struct {
			reason string
			n      uint64
		}{
			{ReasonRcvbufOverflow, in.KernelDrops},
			{ReasonTooLarge, in.TooLarge},
			{ReasonMalformed, malformed},
			{ReasonQueueFull, in.QueueFull},
			{ReasonTableFull, in.TableFull},
			{ReasonListenerFull, in.ListenerFull},
			{ReasonCaptureGap, in.InFlight + in.CaptureFailed},
			{ReasonNATSDown, in.NATSDown},
			{ReasonPublishFailed, in.PublishFailed},
			{ReasonNoAnswer, eg.NoAnswer},
			{ReasonNoWorker, eg.NoWorker},
			{ReasonLateReply, eg.Late},
			{ReasonDuplicateReply, eg.Duplicate},
			{ReasonSendError, eg.SendErrors},
			{ReasonDenied, gs.Denied},
			{ReasonNotAllowed, gs.NotAllowed},
			{ReasonRateLimited, gs.RateLimited},
			{ReasonGlobalLimited, gs.GlobalLimited},
			{ReasonAmplification, gs.Dropped},
		} {
			counter(descDropped, r.n, port, protocol, r.reason)
		}
		if cs, ok := st.CoAP[name]; ok {
			for _, k := range []struct {
				kind string
				n    uint64
			}{
				{"request", cs.Requests}, {"duplicate", cs.Duplicates}, {"ping", cs.Pings},
				{"bad_option", cs.BadOption}, {"rejected", cs.Rejected}, {"block_continue", cs.BlockContinue},
				{"block_served", cs.BlocksServed}, {"piggybacked", cs.Piggybacked}, {"separate", cs.Separate},
				{"retransmission", cs.Retransmissions}, {"gave_up", cs.GaveUp}, {"reset", cs.Resets},
				{"timeout", cs.Timeouts}, {"unavailable", cs.Unavailable}, {"evicted", cs.Evicted},
				{"send_error", cs.SendErrors}, {"too_many_requests", cs.TooManyRequests}, {"echo_challenge", cs.EchoChallenges},
				{"not_found", cs.NotFound},
			} {
				counter(descCoAP, k.n, port, k.kind)
			}
			o := cs.Observe
			ch <- prometheus.MustNewConstMetric(descObservers, prometheus.GaugeValue, float64(o.Observers), port)
			counter(descObserveRegistrations, o.Registrations, port)
			for _, k := range []struct {
				reason string
				n      uint64
			}{
				{"observe=1", o.Observe1}, {"rst", o.RST}, {"gave_up", o.GaveUp}, {"error_code", o.ErrorCode}, {"refused_full", o.RefusedFull},
				{"declined", o.Declined},
			} {
				counter(descObserveEnds, k.n, port, k.reason)
			}
			counter(descNotifications, o.NON, port, "non")
			counter(descNotifications, o.CON, port, "con")
		}
		if rs, ok := st.RPC[name]; ok {
			for _, k := range []struct {
				kind string
				n    uint64
			}{
				{"reply", rs.Replies}, {"deadline_exceeded", rs.Deadline}, {"unavailable", rs.Unavailable},
				{"unimplemented", rs.Unimplemented}, {"send_error", rs.SendErrors},
			} {
				counter(descRPC, k.n, port, k.kind)
			}
		}
		if w, ok := st.WS[name]; ok {
			ch <- prometheus.MustNewConstMetric(descWSConnections, prometheus.GaugeValue, float64(w.Connections), port, protocol)
			counter(descWSAccepted, w.Accepted, port, protocol)
			counter(descWSRefused, w.RefusedOrigin, port, protocol, "origin")
			counter(descWSRefused, w.RefusedFull, port, protocol, "full")
			counter(descWSRefused, w.RefusedUpgrade, port, protocol, "not_websocket")
			counter(descWSIn, w.MessagesIn, port, protocol)
			counter(descWSOut, w.MessagesOut, port, protocol)
			counter(descWSRejected, w.TooLarge, port, protocol, "too_large")
			counter(descWSRejected, w.BadBase64, port, protocol, "bad_base64")
			counter(descWSRejected, w.Malformed, port, protocol, "malformed")
			counter(descWSBusy, w.Busy, port, protocol)
			counter(descWSClosed, w.IdleClose, port, protocol, "idle")
			counter(descWSClosed, w.PingFail, port, protocol, "no_pong")
			counter(descWSDropped, w.Dropped, port, protocol)
			counter(descWSRefused, w.RefusedConnect, port, protocol, "connect")
			counter(descWSRefused, w.RefusedSource, port, protocol, "source")
			counter(descWSRefused, w.RefusedRate, port, protocol, "rate")
			counter(descWSRateLimited, w.RateLimited, port, protocol)
			counter(descWSSReloads, w.CertReloads, port, protocol, "loaded")
			counter(descWSSReloads, w.CertReloadFailed, port, protocol, "failed")
			counter(descWSClosed, w.SlowClose, port, protocol, "slow")
			counter(descWSClosed, w.WorkerClose, port, protocol, "worker")
			counter(descWSPushes, w.Pushes, port, protocol)
			counter(descWSPushRefused, w.PushRefused, port, protocol)
			in := st.Ingress[name]
			counter(descWSEvents, in.Events, port, protocol)
			counter(descWSEventsUncaptured, in.EventCaptureFailed, port, protocol)
		}
	}
	counter(descUnknown, st.Egress.Unknown)
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(st.Capacity))
	ch <- prometheus.MustNewConstMetric(descRecreated, prometheus.CounterValue, float64(st.StreamsRecreated))
	ch <- prometheus.MustNewConstMetric(descDrains, prometheus.CounterValue, float64(st.Drains))
	ch <- prometheus.MustNewConstMetric(descDrainLeft, prometheus.CounterValue, float64(st.DrainLeft))
	ch <- prometheus.MustNewConstMetric(descListenersAdded, prometheus.CounterValue, float64(st.ListenersAdded))
	ch <- prometheus.MustNewConstMetric(descListenersRemoved, prometheus.CounterValue, float64(st.ListenersRemoved))
	for _, gr := range c.g.Groups() {
		ch <- prometheus.MustNewConstMetric(descGroupInstances, prometheus.GaugeValue, float64(gr.Instances), gr.Name, gr.Delivery)
		if !gr.Announced {
			continue // a durable group's consumer says nothing of its figures
		}
		ch <- prometheus.MustNewConstMetric(descGroupRequests, prometheus.GaugeValue, float64(gr.Requests), gr.Name)
		ch <- prometheus.MustNewConstMetric(descGroupErrors, prometheus.GaugeValue, float64(gr.Errors), gr.Name)
		ch <- prometheus.MustNewConstMetric(descGroupProcessing, prometheus.GaugeValue, gr.AverageProcessing.Seconds(), gr.Name)
	}
}

// RegisterGateway registers g's metrics with reg and sets g.Latency to
// observe the request-to-reply histogram of each listener, those added
// while it serves included. Call it before g.Serve.
func RegisterGateway(reg prometheus.Registerer, g *gateway.Gateway) error {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "udpgate_request_duration_seconds",
		Help:    "Time from reading a request datagram to sending the worker's reply.",
		Buckets: LatencyBuckets,
	}, listenerLabels)
	lat := &latencies{h: h, name: g.ListenerName}
	lat.byPort.Store(&map[uint16]latency{})
	for _, l := range g.Listeners {
		p := uint16(l.Conn.LocalAddr().(*net.UDPAddr).Port)
		protocol := l.Protocol
		if protocol == "" {
			protocol = schemas.ProtocolRaw
		}
		lat.learn(p, schemas.Listener(p, protocol))
	}
	if err := reg.Register(h); err != nil {
		return err
	}
	if err := reg.Register(gatewayCollector{g}); err != nil {
		return err
	}
	g.Latency = lat.observe
	return nil
}

// latencies are the request-to-reply histogram's observers by port.
type latencies struct {
	h    *prometheus.HistogramVec
	name func(port uint16) (string, bool) // the listener on port: gateway.Gateway.ListenerName
	mu   sync.Mutex                       // serializes learn
	// byPort is read by the reply path without a lock, and replaced
	// whole by learn: a port seen for the first time, or served again
	// with another protocol.
	byPort atomic.Pointer[map[uint16]latency]
}

type latency struct {
	name string // PORT/PROTOCOL
	o    prometheus.Observer
}

// observe records d for the listener on port; it does not allocate once
// the listener's observer is known.
func (l *latencies) observe(port uint16, d time.Duration) {
	name, ok := l.name(port)
	if !ok {
		return
	}
	e, ok := (*l.byPort.Load())[port]
	if !ok || e.name != name {
		e = l.learn(port, name)
	}
	e.o.Observe(d.Seconds())
}

// learn makes the observer of the listener name on port.
func (l *latencies) learn(port uint16, name string) latency {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := *l.byPort.Load()
	if e, ok := old[port]; ok && e.name == name {
		return e
	}
	_, protocol, _ := schemas.ParseListener(name)
	e := latency{name: name, o: l.h.WithLabelValues(strconv.Itoa(int(port)), protocol)}
	m := make(map[uint16]latency, len(old)+1)
	maps.Copy(m, old)
	m[port] = e
	l.byPort.Store(&m)
	return e
}

// natsCollector reports a NATS connection's state.
type natsCollector struct{ nc *nats.Conn }

func (c natsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descNATSConnected
	ch <- descNATSStatus
	ch <- descNATSReconnects
}

func (c natsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.nc.Status()
	up := 0.0
	if st == nats.CONNECTED {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descNATSConnected, prometheus.GaugeValue, up)
	for _, s := range []nats.Status{nats.CONNECTED, nats.RECONNECTING, nats.CLOSED, nats.DRAINING_SUBS, nats.DRAINING_PUBS} {
		v := 0.0
		if s == st {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descNATSStatus, prometheus.GaugeValue, v, strings.ToLower(s.String()))
	}
	ch <- prometheus.MustNewConstMetric(descNATSReconnects, prometheus.CounterValue, float64(c.nc.Stats().Reconnects))
}

// RegisterNATS registers the state of the process's NATS connection.
func RegisterNATS(reg prometheus.Registerer, nc *nats.Conn) error {
	return reg.Register(natsCollector{nc})
}

var (
	descHandled = prometheus.NewDesc("udpgate_worker_handled_total",
		"Handler calls that returned or panicked.", []string{"group"}, nil)
	descReplied = prometheus.NewDesc("udpgate_worker_replied_total",
		"Replies written by a handler and published.", []string{"group"}, nil)
	descFailed = prometheus.NewDesc("udpgate_worker_failed_total",
		"Handler errors and panics, and replies that could not be published.", []string{"group"}, nil)
	descRetried = prometheus.NewDesc("udpgate_worker_retried_total",
		"Requests handed back for redelivery.", []string{"group"}, nil)
	descExpired = prometheus.NewDesc("udpgate_worker_expired_total",
		"Requests skipped because their deadline had passed.", []string{"group"}, nil)
	descShed = prometheus.NewDesc("udpgate_worker_shed_total",
		"Requests a group refused without calling its handler, under overload: too little time left before their deadline to be handled; answered with the overload status (CoAP 5.03, RPC STATUS_RESOURCE_EXHAUSTED), raw ones dropped.", []string{"group"}, nil)
	descWorkerDropped = prometheus.NewDesc("udpgate_worker_dropped_total",
		"Requests a direct worker instance dropped unhandled: NATS dropped them (a slow consumer), or its full backlog dropped the oldest waiting (answered as shed).", []string{"group"}, nil)
	descWorkerFallback = prometheus.NewDesc("udpgate_worker_fallback_total",
		"Requests a durable instance received on their fallback subject while the capture stream could not take them; also counted by outcome.", []string{"group"}, nil)
	descDuplicates = prometheus.NewDesc("udpgate_worker_duplicates_total",
		"Stored requests a durable instance acked without handling, having answered their fallback copy.", []string{"group"}, nil)
	descWorkerShedAtDoor = prometheus.NewDesc("udpgate_worker_shed_at_door_total",
		"Stored requests a durable instance acked without handling because the gateway had shed them at the door and answered them.", []string{"group"}, nil)
	descWorkerOverloads = prometheus.NewDesc("udpgate_worker_overloads_total",
		"Times a durable instance found its requests waiting too long in the stream and told the gateways to shed at the door.", []string{"group"}, nil)
)

// workersCollector reads worker servers' counters at scrape time.
type workersCollector struct{ ws []*workers.Server }

func (c workersCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHandled, descReplied, descFailed, descRetried, descExpired, descWorkerDropped, descShed, descWorkerFallback, descDuplicates, descWorkerShedAtDoor, descWorkerOverloads} {
		ch <- d
	}
}

func (c workersCollector) Collect(ch chan<- prometheus.Metric) {
	for _, w := range c.ws {
		st := w.Stats()
		for _, m := range []struct {
			d *prometheus.Desc
			n uint64
		}{{descHandled, st.Handled}, {descReplied, st.Replied}, {descFailed, st.Failed}, {descRetried, st.Retried}, {descExpired, st.Expired}, {descWorkerDropped, st.Dropped}, {descShed, st.Shed},
			{descWorkerFallback, st.Fallback}, {descDuplicates, st.Duplicates}, {descWorkerShedAtDoor, st.ShedAtDoor}, {descWorkerOverloads, st.Overloads}} {
			ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.n), w.Group)
		}
	}
}

// RegisterWorkers registers the metrics of the worker servers of one
// process with reg and sets their HandlerLatency. Call it once, before the
// servers' Serve.
func RegisterWorkers(reg prometheus.Registerer, ws ...*workers.Server) error {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "udpgate_worker_handler_duration_seconds",
		Help:    "Time a worker's handler took per request.",
		Buckets: LatencyBuckets,
	}, []string{"group"})
	if err := reg.Register(h); err != nil {
		return err
	}
	if err := reg.Register(workersCollector{ws}); err != nil {
		return err
	}
	for _, w := range ws {
		o := h.WithLabelValues(w.Group)
		w.HandlerLatency = func(d time.Duration) { o.Observe(d.Seconds()) }
	}
	return nil
}

var (
	descInvocations = prometheus.NewDesc("udpgate_lambda_invocations_total",
		"Invoke calls made, retries included.", []string{"function"}, nil)
	descInvokeFailures = prometheus.NewDesc("udpgate_lambda_invocation_failures_total",
		"Invocations that did not give a usable result, by reason.", []string{"function", "reason"}, nil)
	descLambdaRetries = prometheus.NewDesc("udpgate_lambda_retries_total",
		"Invocations retried: throttles, 5xx, network errors, timeouts.", []string{"function"}, nil)
	descBatches = prometheus.NewDesc("udpgate_lambda_batches_total",
		"Batch invocations sent.", []string{"function"}, nil)
	descInFlight = prometheus.NewDesc("udpgate_lambda_invocations_in_flight",
		"Invoke calls in flight now.", []string{"function"}, nil)
)

type lambdaCollector struct {
	b        *lambda.Bridge
	function string
}

func (c lambdaCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInvocations, descInvokeFailures, descLambdaRetries, descBatches, descInFlight} {
		ch <- d
	}
}

func (c lambdaCollector) Collect(ch chan<- prometheus.Metric) {
	st, f := c.b.Stats(), c.function
	ch <- prometheus.MustNewConstMetric(descInvocations, prometheus.CounterValue, float64(st.Invocations), f)
	for _, r := range []struct {
		reason string
		n      uint64
	}{
		{"function_error", st.FunctionErrors}, {"throttled", st.Throttles}, {"timeout", st.Timeouts},
		{"invoke_error", st.InvokeErrors}, {"bad_output", st.BadOutput},
	} {
		ch <- prometheus.MustNewConstMetric(descInvokeFailures, prometheus.CounterValue, float64(r.n), f, r.reason)
	}
	ch <- prometheus.MustNewConstMetric(descLambdaRetries, prometheus.CounterValue, float64(st.Retries), f)
	ch <- prometheus.MustNewConstMetric(descBatches, prometheus.CounterValue, float64(st.Batches), f)
	ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(st.InFlight), f)
}

// RegisterLambda registers the metrics of a Lambda bridge invoking
// function.
func RegisterLambda(reg prometheus.Registerer, b *lambda.Bridge, function string) error {
	return reg.Register(lambdaCollector{b, function})
}

// ListenerFileStats are the readings of the listener file
// (UDPGATE_LISTENERS_FILE) by outcome, and its state now.
type ListenerFileStats struct {
	// Applied counts readings that changed the listeners, Unchanged
	// those that found nothing to change, Refused those refused (a bad
	// or missing file, a port that could not be bound): nothing changed.
	Applied, Unchanged, Refused uint64
	// LastRefused says the latest reading was refused: the listeners
	// served are not those of the file as it is.
	LastRefused bool
	// Listeners is the number of the file's listeners served now.
	Listeners int
}

var (
	descReloads = prometheus.NewDesc("udpgate_listener_reloads_total",
		"Readings of the listener file (UDPGATE_LISTENERS_FILE) by outcome: applied (listeners added or removed), unchanged, refused (nothing changed).",
		[]string{"outcome"}, nil)
	descReloadOK = prometheus.NewDesc("udpgate_listener_file_last_reload_successful",
		"1 if the latest reading of the listener file was applied or found nothing to change, 0 if it was refused.", nil, nil)
	descFileListeners = prometheus.NewDesc("udpgate_listener_file_listeners",
		"Listeners of the listener file served now.", nil, nil)
)

type listenerFileCollector struct{ stats func() ListenerFileStats }

func (c listenerFileCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descReloads
	ch <- descReloadOK
	ch <- descFileListeners
}

func (c listenerFileCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(st.Applied), "applied")
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(st.Unchanged), "unchanged")
	ch <- prometheus.MustNewConstMetric(descReloads, prometheus.CounterValue, float64(st.Refused), "refused")
	ok := 1.0
	if st.LastRefused {
		ok = 0
	}
	ch <- prometheus.MustNewConstMetric(descReloadOK, prometheus.GaugeValue, ok)
	ch <- prometheus.MustNewConstMetric(descFileListeners, prometheus.GaugeValue, float64(st.Listeners))
}

// RegisterListenerFile registers the metrics of a listener file, read
// from stats at scrape time.
func RegisterListenerFile(reg prometheus.Registerer, stats func() ListenerFileStats) error {
	return reg.Register(listenerFileCollector{stats})
}
