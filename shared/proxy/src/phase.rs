//! Filters as phases, and the one driver that runs them.
//!
//! A wasmesh filter is a [`Phase`]: its configured state (shared by every request of the plugin)
//! and, per request, a [`PhaseRequest`] with the callbacks Envoy's HTTP filter would get, each
//! given the request's [`Stream`]. A [`ChainRoot`] runs a list of phases in one Envoy filter:
//!
//! - one phase: the per-filter layout (`wasmesh.authz` is a chain of the authz phase alone), as
//!   Istio's `WasmPlugin` phases need one filter per phase;
//! - several: the one-pass layout (`wasmesh.chain`), every phase in one HTTP context, so one set
//!   of host→guest callbacks per request instead of one per filter, the request headers read once
//!   as one map, each property read once, and what one phase hands to the next (the verified
//!   identity) kept in memory.
//!
//! Request-side callbacks run the phases in order and stop at the first that answers
//! ([`Flow::Answered`]) or waits ([`Flow::Pause`]); the response-side callbacks run, in reverse
//! order as Envoy runs encoder filters, the phases the request reached; `on_log` runs every phase.
//! A phase that waited is resumed by the driver when its answer comes: an HTTP call made from the
//! stream ([`PhaseRequest::http_call_response`], [`PhaseRequest::grpc_call_response`]) or a root-side wait that ends with
//! [`Resumer::resume`] (authn waiting for JWKS keys). The driver then runs the phases after it and
//! resumes the request in Envoy when all of them continue. Phases never call
//! `resume_http_request` themselves.

use crate::stream::{HeaderReads, Stream};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;
use wasmesh_istio::module::{Callbacks, Variant};

/// What a phase says about the request after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on to the next phase (and, after the last, to Envoy's next filter).
    Continue,
    /// This phase answered the request ([`Stream::send_response`]): later phases do not see it;
    /// the response side and `on_log` still run.
    Answered,
    /// Wait for a call this phase made; the driver resumes the request when its answer comes.
    Pause,
}

/// A configured filter: shared by every request of the plugin.
pub trait Phase {
    /// Its name in log lines (`authz`).
    fn name(&self) -> &'static str;

    /// The state of one new request (it keeps the phase alive with the `Rc`).
    fn start(self: Rc<Self>, context_id: u32) -> Box<dyn PhaseRequest>;

    /// How the request headers are read when this phase is alone in its filter.
    fn header_reads(&self) -> HeaderReads {
        HeaderReads::Map
    }

    /// How often [`Phase::tick`] should run; `None`: never. Asked again after every tick, so a
    /// phase may ask for sooner ticks while it has work (the driver ticks at the shortest period
    /// any phase wants, so a tick may come sooner than asked).
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    fn tick(&self) {}

    /// The answer to an HTTP call the phase's root side made (a JWKS fetch); `true` when the token
    /// was this phase's.
    fn root_http_call_response(&self, _token_id: u32, _num_headers: usize, _body_size: usize) -> bool {
        false
    }

    /// A gRPC call this phase made from the root answered (`status_code` 0: OK); `true` when
    /// the token was this phase's.
    fn root_grpc_call_response(&self, _token_id: u32, _status_code: u32) -> bool {
        false
    }

    /// The plugin is stopping (its root context is deleted): flush what is batched.
    fn done(&self) {}

    /// A network (TCP) role of the filter: the root gives Envoy stream contexts from
    /// [`Phase::stream_context`] instead of HTTP contexts. Only for the first phase of its
    /// filter; the phases after it then serve the root only (ticks, calls made from the root:
    /// the access log's OTLP export), as no HTTP context is ever made.
    fn is_network(&self) -> bool {
        false
    }

    fn stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        None
    }

    /// The response-side callbacks this phase's configuration needs Envoy to call
    /// ([`wasmesh_istio::module`]): the module refuses a configuration needing one it does not
    /// export. The default, all of them, is for phases whose work runs there (stats, access logs,
    /// tracing); a phase that needs fewer says so from its core (the rule wasmeshctl also uses to
    /// pick the module).
    fn callbacks(&self) -> Callbacks {
        Callbacks::ALL
    }
}

thread_local! {
    /// Which module this is ([`set_module_variant`]).
    static MODULE_VARIANT: std::cell::Cell<Variant> = const { std::cell::Cell::new(Variant::Full) };
}

/// Set once at start by `filters/wasmesh` from its variant marker: in a module built without some
/// response-side callbacks every [`ChainRoot`] refuses a configuration whose phases need one of
/// them ([`refusal`]). Modules that never call it are [`Variant::Full`].
pub fn set_module_variant(module: Variant) {
    MODULE_VARIANT.with(|m| m.set(module));
}

/// Why this module cannot run `phases`, naming the first phase needing a callback it lacks, what
/// it needs and the module to use instead; `None`: it can.
pub fn refusal(phases: &[Rc<dyn Phase>], module: Variant) -> Option<String> {
    let lacks = module.lacks();
    let p = phases.iter().find(|p| !p.callbacks().intersection(lacks).is_empty())?;
    let missing = p.callbacks().intersection(lacks);
    Some(format!(
        "the {} phase's configuration needs the {} callback{} ({}), which this module ({}) does not export; \
         run it from {} (wasmeshctl picks the module for the filters it writes)",
        p.name(),
        missing.describe(),
        if missing.exports().len() == 1 { "" } else { "s" },
        missing.exports().join(", "),
        module.file_name(),
        Variant::Full.file_name(),
    ))
}

/// One request's state in one phase: Envoy's HTTP filter callbacks, with the request's stream.
pub trait PhaseRequest {
    fn request_headers(&mut self, _s: &Stream, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    fn request_body(&mut self, _s: &Stream, _body_size: usize, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    /// Whether this phase reads the request body while the request headers are held (a phase
    /// waits, possibly this one, for the body itself): then `request_body`/`request_trailers`
    /// reach it before the headers go on, and when it is the waiting phase, its [`Flow`] there
    /// resumes or answers the request. Envoy hands a wasm filter the body while it holds the
    /// headers only with `allow_on_headers_stop_iteration` (wasmeshctl sets it for such a phase).
    fn wants_body(&self) -> bool {
        false
    }
    fn request_trailers(&mut self, _s: &Stream) -> Flow {
        Flow::Continue
    }
    fn response_headers(&mut self, _s: &Stream, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    fn response_body(&mut self, _s: &Stream, _body_size: usize, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    fn log(&mut self, _s: &Stream) {}
    /// The answer to an HTTP call this phase made for the request (`None`: not its call). When
    /// the phase was waiting for it, its [`Flow`] resumes (or answers) the request.
    fn http_call_response(
        &mut self,
        _s: &Stream,
        _token_id: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) -> Option<Flow> {
        None
    }
    /// The answer to a gRPC call this phase made for the request (`None`: not its call), as
    /// [`PhaseRequest::http_call_response`]; `status_code` is the call's gRPC status (0: OK,
    /// the message is in Envoy's gRPC receive buffer).
    fn grpc_call_response(
        &mut self,
        _s: &Stream,
        _token_id: u32,
        _status_code: u32,
        _response_size: usize,
    ) -> Option<Flow> {
        None
    }
}

/// Builds a filter's phases from its plugin configuration.
pub type Build = fn(config: &[u8], resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String>;

/// Requests waiting for a phase's root-side work, by Envoy context id.
type Waiting = Rc<RefCell<Vec<(u32, Weak<RefCell<Request>>)>>>;

/// Lets a phase's root side resume a request it made wait (it returned [`Flow::Pause`] from
/// `request_headers`).
#[derive(Clone)]
pub struct Resumer {
    waiting: Waiting,
}

impl Resumer {
    /// The phase is done waiting for request `context_id`: [`Flow::Continue`] runs the later
    /// phases and resumes the request, [`Flow::Answered`] means the phase has sent its reply.
    /// Call it with the stream as the effective context (`set_effective_context`), as the phase
    /// does to evaluate or answer it. `false`: no such waiting request (it is gone).
    pub fn resume(&self, context_id: u32, flow: Flow) -> bool {
        let found = {
            let waiting = self.waiting.borrow();
            waiting.iter().find(|(id, _)| *id == context_id).and_then(|(_, w)| w.upgrade())
        };
        let Some(request) = found else { return false };
        let Ok(mut r) = request.try_borrow_mut() else {
            crate::log_error("wasmesh: a request was resumed while it was running; refusing it");
            return false;
        };
        r.resume(&self.waiting, flow);
        true
    }
}

/// Where a request is in its phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Request headers not seen yet.
    Start,
    /// Phase `i` waits.
    Paused(usize),
    /// Phase `i` answered.
    Answered(usize),
    /// Every phase let the request headers through.
    Passed,
}

/// The phases' states of one request: a filter of one phase (the per-filter layout) holds its
/// one state without the list's allocation.
enum PhaseRequests {
    One(Box<dyn PhaseRequest>),
    Many(Vec<Box<dyn PhaseRequest>>),
}

impl PhaseRequests {
    fn start(phases: &[Rc<dyn Phase>], context_id: u32) -> PhaseRequests {
        match phases {
            [one] => PhaseRequests::One(one.clone().start(context_id)),
            _ => PhaseRequests::Many(phases.iter().map(|p| p.clone().start(context_id)).collect()),
        }
    }
}

impl std::ops::Deref for PhaseRequests {
    type Target = [Box<dyn PhaseRequest>];
    fn deref(&self) -> &Self::Target {
        match self {
            PhaseRequests::One(p) => std::slice::from_ref(p),
            PhaseRequests::Many(v) => v,
        }
    }
}

impl std::ops::DerefMut for PhaseRequests {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            PhaseRequests::One(p) => std::slice::from_mut(p),
            PhaseRequests::Many(v) => v,
        }
    }
}

/// One request in the driver.
pub struct Request {
    context_id: u32,
    /// Itself, for the list of waiting requests.
    me: Weak<RefCell<Request>>,
    stream: Stream,
    phases: PhaseRequests,
    at: At,
}

impl Request {
    /// How many phases saw the request headers.
    fn reached(&self) -> usize {
        match self.at {
            At::Start => 0,
            At::Paused(i) | At::Answered(i) => i + 1,
            At::Passed => self.phases.len(),
        }
    }

    /// Runs `request_headers` from phase `from` on, then the route-cache clear a phase asked for
    /// (if no later header edit did it).
    fn run_headers(&mut self, from: usize, end_of_stream: bool) -> Flow {
        let flow = self.run_headers_from(from, end_of_stream);
        self.stream.flush_route_cache();
        flow
    }

    fn run_headers_from(&mut self, from: usize, end_of_stream: bool) -> Flow {
        for i in from..self.phases.len() {
            let Some(p) = self.phases.get_mut(i) else { break };
            match p.request_headers(&self.stream, end_of_stream) {
                Flow::Continue => {}
                Flow::Answered => {
                    self.at = At::Answered(i);
                    return Flow::Answered;
                }
                Flow::Pause => {
                    self.at = At::Paused(i);
                    return Flow::Pause;
                }
            }
        }
        self.at = At::Passed;
        Flow::Continue
    }

    /// Keeps the request in the waiting list while a phase waits, takes it out otherwise.
    fn register(&self, waiting: &Waiting) {
        let mut w = waiting.borrow_mut();
        w.retain(|(id, _)| *id != self.context_id);
        if matches!(self.at, At::Paused(_)) {
            w.push((self.context_id, self.me.clone()));
        }
    }

    /// The phase that waited is done with `flow`.
    fn resume(&mut self, waiting: &Waiting, flow: Flow) {
        let At::Paused(i) = self.at else { return };
        match flow {
            Flow::Pause => {}
            Flow::Answered => self.at = At::Answered(i),
            Flow::Continue => {
                if self.run_headers(i + 1, false) == Flow::Continue {
                    let _ = hostcalls::resume_http_request();
                }
            }
        }
        self.register(waiting);
    }

    /// Body or trailers: each phase while the request passes; held while a phase waits or after
    /// one answered (the body must not reach the upstream before the decision).
    fn run_data(&mut self, mut f: impl FnMut(&mut dyn PhaseRequest, &Stream) -> Flow) -> Action {
        if self.at != At::Passed {
            return self.held_data(f);
        }
        for p in self.phases.iter_mut() {
            if f(p.as_mut(), &self.stream) != Flow::Continue {
                return Action::Pause;
            }
        }
        Action::Continue
    }
}

impl Request {
    /// Body or trailers while the headers are held: only the phases that read the body
    /// ([`PhaseRequest::wants_body`]) see it; the waiting phase's answer resumes or answers the
    /// request (the data goes on with the headers: `Action::Continue`), otherwise it stays held.
    fn held_data(&mut self, mut f: impl FnMut(&mut dyn PhaseRequest, &Stream) -> Flow) -> Action {
        let waiting = match self.at {
            At::Paused(i) => i,
            _ => return Action::Pause,
        };
        let mut waiting_flow = Flow::Pause;
        for (i, p) in self.phases.iter_mut().enumerate() {
            if p.wants_body() {
                let flow = f(p.as_mut(), &self.stream);
                if i == waiting {
                    waiting_flow = flow;
                }
            }
        }
        match waiting_flow {
            Flow::Pause => Action::Pause,
            Flow::Answered => {
                self.at = At::Answered(waiting);
                Action::Pause
            }
            Flow::Continue => {
                let flow = self.run_headers(waiting + 1, false);
                if flow == Flow::Continue {
                    // The phases after the waiting one see this piece of the body as it passes.
                    for p in self.phases.iter_mut().skip(waiting + 1) {
                        if f(p.as_mut(), &self.stream) != Flow::Continue {
                            return Action::Pause;
                        }
                    }
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
        }
    }
}

/// The HTTP context Envoy talks to: a shell around the request the driver keeps.
struct Http {
    request: Rc<RefCell<Request>>,
    waiting: Waiting,
}

impl Context for Http {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        let Ok(mut r) = self.request.try_borrow_mut() else { return };
        let r = &mut *r;
        let waiting_phase = match r.at {
            At::Paused(i) => Some(i),
            _ => None,
        };
        for (i, p) in r.phases.iter_mut().enumerate() {
            if let Some(flow) = p.http_call_response(&r.stream, token_id, num_headers, body_size, num_trailers) {
                if waiting_phase == Some(i) {
                    r.resume(&self.waiting, flow);
                }
                return;
            }
        }
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.on_grpc_answer(token_id, status_code, response_size);
    }
}

impl Http {
    fn on_grpc_answer(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Ok(mut r) = self.request.try_borrow_mut() else { return };
        let r = &mut *r;
        let waiting_phase = match r.at {
            At::Paused(i) => Some(i),
            _ => None,
        };
        for (i, p) in r.phases.iter_mut().enumerate() {
            if let Some(flow) = p.grpc_call_response(&r.stream, token_id, status_code, response_size) {
                if waiting_phase == Some(i) {
                    r.resume(&self.waiting, flow);
                }
                return;
            }
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Ok(mut r) = self.request.try_borrow_mut() else { return Action::Pause };
        let flow = r.run_headers(0, end_of_stream);
        r.register(&self.waiting);
        match flow {
            Flow::Continue => Action::Continue,
            Flow::Answered | Flow::Pause => Action::Pause,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.request.try_borrow_mut() {
            Ok(mut r) => {
                let held = r.at != At::Passed;
                let action = r.run_data(|p, s| p.request_body(s, body_size, end_of_stream));
                if held {
                    r.register(&self.waiting);
                }
                action
            }
            Err(_) => Action::Pause,
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.request.try_borrow_mut() {
            Ok(mut r) => {
                let held = r.at != At::Passed;
                let action = r.run_data(|p, s| p.request_trailers(s));
                if held {
                    r.register(&self.waiting);
                }
                action
            }
            Err(_) => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Ok(mut r) = self.request.try_borrow_mut() else { return Action::Continue };
        let r = &mut *r;
        r.stream.enter_response();
        let reached = r.reached();
        for p in r.phases.iter_mut().take(reached).rev() {
            if p.response_headers(&r.stream, end_of_stream) == Flow::Pause {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Ok(mut r) = self.request.try_borrow_mut() else { return Action::Continue };
        let r = &mut *r;
        let reached = r.reached();
        for p in r.phases.iter_mut().take(reached).rev() {
            if p.response_body(&r.stream, body_size, end_of_stream) == Flow::Pause {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Ok(mut r) = self.request.try_borrow_mut() else { return };
        let r = &mut *r;
        r.stream.enter_response();
        for p in r.phases.iter_mut() {
            p.log(&r.stream);
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Ok(r) = self.request.try_borrow() {
            let id = r.context_id;
            self.waiting.borrow_mut().retain(|(i, _)| *i != id);
        }
    }
}

/// The root context of a wasmesh filter: configures its phases and gives Envoy one HTTP context
/// per request that runs them all.
pub struct ChainRoot {
    /// For log lines: `wasmesh authz`, `wasmesh chain`.
    label: &'static str,
    build: Build,
    phases: Vec<Rc<dyn Phase>>,
    waiting: Waiting,
    tick: Option<Duration>,
    /// The id of the VM memory gauge, once defined ([`crate::metrics::report_vm_memory`]).
    memory_gauge: std::cell::Cell<Option<u32>>,
}

impl ChainRoot {
    pub fn new(label: &'static str, build: Build) -> ChainRoot {
        ChainRoot {
            label,
            build,
            phases: Vec::new(),
            waiting: Rc::default(),
            tick: None,
            memory_gauge: std::cell::Cell::new(None),
        }
    }

    /// Sets the tick to the shortest period a phase wants.
    fn retick(&mut self) {
        let want = self.phases.iter().filter_map(|p| p.tick_period()).min();
        if want != self.tick {
            if let Some(period) = want {
                if hostcalls::set_tick_period(period).is_err() {
                    crate::log_warn(&format!(
                        "{}: no tick; batched counters are flushed when the VM stops",
                        self.label
                    ));
                }
            }
            self.tick = want;
        }
    }
}

impl Context for ChainRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        for p in &self.phases {
            if p.root_http_call_response(token_id, num_headers, body_size) {
                break;
            }
        }
        self.retick();
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
        for p in &self.phases {
            if p.root_grpc_call_response(token_id, status_code) {
                break;
            }
        }
        self.retick();
    }
}

/// The plugin is stopping: Envoy deletes its root context (`proxy_on_delete`, right after
/// `proxy_on_done` returned true) and the SDK drops it here, with the root as the effective
/// context, so the phases flush what they batch. Not in `on_done`: that needs the
/// `proxy_on_done` export, which Envoy calls for every request's context too (about 2.2k
/// instructions each); without it the modules leave it out (tools/strip-exports).
impl Drop for ChainRoot {
    fn drop(&mut self) {
        for p in &self.phases {
            p.done();
        }
    }
}

impl RootContext for ChainRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = crate::plugin_configuration() else {
            crate::log_error(&format!("{}: no plugin configuration; expected the JSON wasmeshctl writes", self.label));
            return false;
        };
        let resumer = Resumer { waiting: self.waiting.clone() };
        match (self.build)(&bytes, &resumer) {
            Ok(phases) => {
                if let Some(why) = refusal(&phases, MODULE_VARIANT.with(std::cell::Cell::get)) {
                    // Fail closed: Envoy rejects the plugin rather than the response side being
                    // silently skipped.
                    crate::log_error(&format!("{}: configuration rejected: {why}", self.label));
                    return false;
                }
                self.phases = phases;
                self.tick = None;
                self.retick();
                true
            }
            Err(e) => {
                crate::log_error(&format!("{}: configuration rejected: {e}", self.label));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        for p in &self.phases {
            p.tick();
        }
        crate::metrics::report_vm_memory(&self.memory_gauge);
        self.retick();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let reads = match self.phases.as_slice() {
            [one] => one.header_reads(),
            _ => HeaderReads::Map,
        };
        let phases = PhaseRequests::start(&self.phases, context_id);
        let request = Rc::new_cyclic(|me| {
            RefCell::new(Request {
                context_id,
                me: me.clone(),
                stream: Stream::new(context_id, reads),
                phases,
                at: At::Start,
            })
        });
        Some(Box::new(Http { request, waiting: self.waiting.clone() }))
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        self.phases.first().and_then(|p| p.stream_context(context_id))
    }

    fn get_type(&self) -> Option<ContextType> {
        match self.phases.as_slice() {
            [first, ..] if first.is_network() => Some(ContextType::StreamContext),
            _ => Some(ContextType::HttpContext),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Needs(&'static str, Callbacks);

    impl Phase for Needs {
        fn name(&self) -> &'static str {
            self.0
        }
        fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
            struct Nothing;
            impl PhaseRequest for Nothing {}
            Box::new(Nothing)
        }
        fn callbacks(&self) -> Callbacks {
            self.1
        }
    }

    fn phases(list: &[(&'static str, Callbacks)]) -> Vec<Rc<dyn Phase>> {
        list.iter().map(|(n, c)| Rc::new(Needs(n, *c)) as Rc<dyn Phase>).collect()
    }

    #[test]
    fn the_request_side_module_refuses_a_phase_needing_a_response_callback_naming_it() {
        let request_only =
            phases(&[("authn", Callbacks::NONE), ("authz", Callbacks::NONE), ("router", Callbacks::NONE)]);
        assert_eq!(refusal(&request_only, Variant::RequestSide), None);
        let with_headers =
            phases(&[("authz", Callbacks::NONE), ("router", Callbacks::RESPONSE_HEADERS), ("stats", Callbacks::ALL)]);
        let why = refusal(&with_headers, Variant::RequestSide).unwrap_or_default();
        assert!(why.contains("the router phase"), "{why}");
        assert!(why.contains("response headers callback (proxy_on_response_headers)"), "{why}");
        assert!(why.contains("wasmesh-request.wasm") && why.contains("run it from wasmesh.wasm"), "{why}");
        // The full module runs everything.
        assert_eq!(refusal(&with_headers, Variant::Full), None);
    }

    #[test]
    fn a_phase_that_does_not_say_needs_every_callback() {
        struct Silent;
        impl Phase for Silent {
            fn name(&self) -> &'static str {
                "silent"
            }
            fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
                struct Nothing;
                impl PhaseRequest for Nothing {}
                Box::new(Nothing)
            }
        }
        assert_eq!(Silent.callbacks(), Callbacks::ALL);
        let why = refusal(&[Rc::new(Silent) as Rc<dyn Phase>], Variant::RequestSide).unwrap_or_default();
        assert!(why.contains("response headers, log callbacks"), "{why}");
    }
}
