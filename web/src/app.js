// The voice page: connect to the stack's LiveKit, talk to the agent, see both sides' words.
//
// Tokens come from the page's own route (./token, i.e. /call/token) in LiveKit's standard
// endpoint format through TokenSource.endpoint: the browser never holds TOKEN_KEY (private
// mode: Caddy's basic auth guards /call/* and adds the key upstream; public mode: the route
// mints keyless short-lived demo tokens). Nothing here is LiveKit-Cloud-only (no Krisp, no sandbox).
import './app.css';
import {
  ConnectionState, DisconnectReason, MediaDeviceFailure, ParticipantKind, Room, RoomEvent, Track, TokenSource,
} from 'livekit-client';

const TRANSCRIPTION_TOPIC = 'lk.transcription';   // livekit-agents' text streams (user and agent)
const AGENT_STATE = 'lk.agent.state';            // participant attribute: listening/thinking/speaking
const SEGMENT_ID = 'lk.segment_id';
const FINAL = 'lk.transcription_final';
// Set to "true" by the stack (agent, recorder or admin API) as a participant attribute, or as a key
// of the room metadata JSON, while the call is recorded. Callers cannot set it (the token service refuses).
const RECORDING = 'voicestack.recording';
const params = new URLSearchParams(location.search);
const AGENT_DEADLINE_S = Number(params.get('agent_timeout')) || 20;

const $ = (id) => document.getElementById(id);
const ui = {
  main: document.querySelector('main'), status: $('status'), message: $('message'), connect: $('connect'),
  mic: $('mic'), device: $('device'), name: $('name'), startAudio: $('start-audio'), recording: $('recording'),
  agentState: $('agent-state'), transcript: $('transcript'), audio: $('audio'),
  levels: { user: $('level-user'), agent: $('level-agent') },
};

// Read-only diagnostics for people and tests (timings in ms since navigation start).
const diag = { timings: { loaded: performance.now() }, errors: [], audioContextState: () => audioCtx && audioCtx.state };
window.voicestackCall = diag;

const tokenSource = TokenSource.endpoint(new URL('token', document.baseURI).href);
let room = null;
let agentTimer = null;
const meters = { user: null, agent: null };
const segments = new Map();   // segment id -> <li>

function setStatus(text) { ui.status.textContent = text; }

function showMessage(text, kind = 'error') {
  ui.message.textContent = text;
  ui.message.dataset.kind = kind;
  ui.message.hidden = !text;
  if (text && kind === 'error') diag.errors.push(text);
}

function explainMediaError(err) {
  switch (MediaDeviceFailure.getFailure(err)) {
    case MediaDeviceFailure.PermissionDenied:
      return 'Microphone access was denied. Allow the microphone for this site (the icon left of the address ' +
        'bar), then turn the microphone on again. You can still hear the agent.';
    case MediaDeviceFailure.NotFound:
      return 'No microphone was found. Plug one in or pick another one in the list, then turn it on again.';
    case MediaDeviceFailure.DeviceInUse:
      return 'The microphone is in use by another program. Close it, then turn the microphone on again.';
    default:
      return `The microphone could not be started: ${err && err.message ? err.message : err}`;
  }
}

function explainTokenError(err) {
  // TokenSource.endpoint throws "... received <status> / <body>" on a non-2xx answer.
  const text = String(err && err.message ? err.message : err);
  const status = Number((text.match(/received (\d{3})/) || [])[1]);
  let detail = '';
  try { detail = JSON.parse(text.slice(text.indexOf('/ ') + 2)).error || ''; } catch { /* not JSON */ }
  if (status === 401) return 'The token service refused this page (401). Reload the page and sign in again.';
  if (status === 429) return `Too many calls from your address. ${detail || 'Wait a minute and connect again.'}`;
  if (status === 503) return `The call service is busy or cannot reach LiveKit: ${detail || 'try again in a minute.'}`;
  if (status) return `Could not get a call token (${status}): ${detail || text}`;
  return `Could not reach the token service: ${text}. Check your network connection.`;
}

// --- levels -----------------------------------------------------------------------------------------

// One AudioContext for every meter, created and resumed inside the Connect click: browsers start
// audio only with a user gesture, and a context made later (on TrackSubscribed) stays suspended
// in Firefox.
let audioCtx = null;

function unlockAudio() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!audioCtx && Ctx) audioCtx = new Ctx();
  if (audioCtx && audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
}

function startMeter(kind, track) {
  stopMeter(kind);
  if (!audioCtx) return;
  // The user's meter reads a clone, so it keeps reading while LiveKit mutes or swaps the original.
  const media = kind === 'user' ? track.mediaStreamTrack.clone() : track.mediaStreamTrack;
  const source = audioCtx.createMediaStreamSource(new MediaStream([media]));
  const analyser = audioCtx.createAnalyser();
  analyser.fftSize = 2048;
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const el = ui.levels[kind];
  let peak = Number(el.dataset.peak) || 0;
  let raf = 0;
  const tick = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    // -60..0 dBFS onto the bar: speech sits around -30..-10.
    const db = 20 * Math.log10(rms + 1e-9);
    el.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
    el.dataset.level = rms.toFixed(4);
    if (rms > peak) { peak = rms; el.dataset.peak = rms.toFixed(4); }
    if (kind === 'agent' && rms > 0.01 && !diag.timings.agentAudio) diag.timings.agentAudio = performance.now();
    raf = requestAnimationFrame(tick);
  };
  tick();
  meters[kind] = () => {
    cancelAnimationFrame(raf);
    source.disconnect();
    if (kind === 'user') media.stop();
    el.style.width = '0';
    el.dataset.level = '0';
  };
}

function stopMeter(kind) {
  if (meters[kind]) { meters[kind](); meters[kind] = null; }
}

// --- transcript -------------------------------------------------------------------------------------

function upsertSegment(id, who, text, final) {
  let li = segments.get(id);
  if (!li) {
    li = document.createElement('li');
    li.className = who;
    li.innerHTML = '<span class="who"></span><span class="text"></span>';
    li.querySelector('.who').textContent = who === 'user' ? 'You' : 'Agent';
    segments.set(id, li);
    ui.transcript.append(li);
  }
  li.querySelector('.text').textContent = text;
  li.classList.toggle('interim', !final);
  li.dataset.final = String(final);
  ui.transcript.parentElement.scrollTop = ui.transcript.parentElement.scrollHeight;
  if (who === 'agent' && final && !diag.timings.greeting) diag.timings.greeting = performance.now();
}

async function onTranscription(reader, participantInfo) {
  const attrs = reader.info.attributes || {};
  const id = attrs[SEGMENT_ID] || reader.info.id;
  const who = participantInfo.identity === room.localParticipant.identity ? 'user' : 'agent';
  // Each stream carries the segment's text so far: agents stream the agent's words as deltas in
  // one stream, and send each interim user transcript as a new stream with the full text.
  let text = '';
  for await (const chunk of reader) {
    text += chunk;
    upsertSegment(id, who, text, attrs[FINAL] === 'true');
  }
  upsertSegment(id, who, text, true);
}

// --- agent, recording -------------------------------------------------------------------------------

function agentParticipant() {
  if (!room) return null;
  for (const p of room.remoteParticipants.values()) if (p.kind === ParticipantKind.AGENT) return p;
  return null;
}

function refreshAgent() {
  const agent = agentParticipant();
  const state = agent ? agent.attributes[AGENT_STATE] || 'joining' : '';
  ui.agentState.textContent = agent ? state : 'not here yet';
  ui.agentState.dataset.state = state;
  if (agent && agentTimer) {
    clearTimeout(agentTimer);
    agentTimer = null;
    diag.timings.agentJoined = performance.now();
    if (ui.message.dataset.kind === 'info') showMessage('');
  }
}

function refreshRecording() {
  let on = false;
  if (room) {
    try { on = String(JSON.parse(room.metadata || '{}')[RECORDING]) === 'true'; } catch { /* not JSON */ }
    const everyone = [room.localParticipant, ...room.remoteParticipants.values()];
    on = on || everyone.some((p) => p.attributes && p.attributes[RECORDING] === 'true');
  }
  ui.recording.hidden = !on;
}

// --- devices ----------------------------------------------------------------------------------------

async function refreshDevices() {
  let devices = [];
  try { devices = await Room.getLocalDevices('audioinput', false); } catch { return; }
  const current = ui.device.value || (room && room.getActiveDevice('audioinput')) || '';
  ui.device.replaceChildren(...devices.map((d, i) => {
    const opt = document.createElement('option');
    opt.value = d.deviceId;
    opt.textContent = d.label || `Microphone ${i + 1}`;
    return opt;
  }));
  if (!devices.length) ui.device.append(new Option('No microphone found', ''));
  if (current && devices.some((d) => d.deviceId === current)) ui.device.value = current;
}

ui.device.addEventListener('change', async () => {
  if (!room || room.state !== ConnectionState.Connected) return;
  try {
    await room.switchActiveDevice('audioinput', ui.device.value);
  } catch (err) {
    showMessage(explainMediaError(err));
  }
});

// --- microphone -------------------------------------------------------------------------------------

async function setMicrophone(on) {
  ui.mic.disabled = true;
  try {
    const pub = await room.localParticipant.setMicrophoneEnabled(on, ui.device.value ? { deviceId: ui.device.value } : undefined);
    if (on && pub && pub.track) startMeter('user', pub.track); else stopMeter('user');
    if (on && /^(Microphone|No microphone|The microphone)/.test(ui.message.textContent)) showMessage('');
    await refreshDevices();   // labels appear once permission is granted
  } catch (err) {
    stopMeter('user');
    showMessage(explainMediaError(err));
  } finally {
    const enabled = room ? room.localParticipant.isMicrophoneEnabled : false;
    ui.mic.setAttribute('aria-pressed', String(enabled));
    ui.mic.textContent = enabled ? 'Mute microphone' : 'Turn microphone on';
    ui.mic.disabled = !room;
  }
}

ui.mic.addEventListener('click', () => setMicrophone(!room.localParticipant.isMicrophoneEnabled));

// --- connection -------------------------------------------------------------------------------------

function wire(r) {
  r.on(RoomEvent.ConnectionStateChanged, (state) => {
    setStatus({ connecting: 'Connecting…', connected: 'Connected', reconnecting: 'Reconnecting…',
      signalReconnecting: 'Reconnecting…', disconnected: 'Not connected' }[state] || state);
  });
  r.on(RoomEvent.Disconnected, (reason) => {
    if (room !== r) return;
    if (reason !== undefined && reason !== DisconnectReason.CLIENT_INITIATED) {
      showMessage(`The call ended: the server closed the connection (${DisconnectReason[reason] || reason}). ` +
        'Connect again to start a new call.');
    }
    teardown();
  });
  r.on(RoomEvent.TrackSubscribed, (track, _pub, participant) => {
    if (track.kind !== Track.Kind.Audio) return;
    // Attach before analysing: Chrome feeds WebAudio silence from a remote WebRTC track that no
    // media element plays.
    const el = track.attach();
    el.dataset.participant = participant.identity;
    ui.audio.append(el);
    if (participant.kind === ParticipantKind.AGENT) startMeter('agent', track);
  });
  r.on(RoomEvent.TrackUnsubscribed, (track, _pub, participant) => {
    track.detach().forEach((el) => el.remove());
    if (participant.kind === ParticipantKind.AGENT) stopMeter('agent');
  });
  r.on(RoomEvent.ParticipantConnected, () => { refreshAgent(); refreshRecording(); });
  r.on(RoomEvent.ParticipantDisconnected, () => { refreshAgent(); refreshRecording(); });
  r.on(RoomEvent.ParticipantAttributesChanged, () => { refreshAgent(); refreshRecording(); });
  r.on(RoomEvent.RoomMetadataChanged, refreshRecording);
  r.on(RoomEvent.MediaDevicesChanged, refreshDevices);
  r.on(RoomEvent.AudioPlaybackStatusChanged, () => { ui.startAudio.hidden = r.canPlaybackAudio; });
  r.registerTextStreamHandler(TRANSCRIPTION_TOPIC, (reader, info) => {
    onTranscription(reader, info).catch((err) => diag.errors.push(`transcript: ${err}`));
  });
}

function teardown() {
  clearTimeout(agentTimer);
  agentTimer = null;
  stopMeter('user');
  stopMeter('agent');
  ui.audio.replaceChildren();
  room = null;
  ui.main.dataset.state = 'idle';
  ui.connect.textContent = 'Connect';
  ui.connect.disabled = false;
  ui.mic.disabled = true;
  ui.startAudio.hidden = true;
  refreshAgent();
  refreshRecording();
}

async function connect() {
  unlockAudio();   // first, while the click's user activation is fresh
  ui.connect.disabled = true;
  showMessage('');
  setStatus('Getting a call token…');
  let details;
  try {
    const name = ui.name.value.trim();
    // force: a fresh token (and so a fresh room) for every call.
    details = await tokenSource.fetch(name ? { participantName: name } : {}, true);
  } catch (err) {
    showMessage(explainTokenError(err));
    setStatus('Not connected');
    ui.connect.disabled = false;
    return;
  }
  const r = new Room({ adaptiveStream: true, dynacast: true });
  room = r;
  wire(r);
  setStatus('Connecting…');
  try {
    await r.connect(details.serverUrl, details.participantToken);
  } catch (err) {
    room = null;
    showMessage(`Could not connect to the call server at ${details.serverUrl}: ${err && err.message ? err.message : err}. ` +
      'Check your network (a firewall may block WebRTC); if it keeps failing, the server may be down.');
    teardown();
    return;
  }
  diag.timings.connected = performance.now();
  diag.room = r.name;
  diag.identity = r.localParticipant.identity;
  ui.main.dataset.state = 'connected';
  ui.connect.textContent = 'Disconnect';
  ui.connect.disabled = false;
  r.startAudio().catch(() => { ui.startAudio.hidden = false; });
  refreshAgent();
  refreshRecording();
  if (!agentParticipant()) {
    showMessage('Waiting for the agent to join…', 'info');
    agentTimer = setTimeout(() => {
      agentTimer = null;
      if (room === r && !agentParticipant()) {
        showMessage(`No agent joined within ${AGENT_DEADLINE_S} s. The agent service may be down or busy: ` +
          'disconnect and try again in a minute, or ask the operator to check the voice agent.');
      }
    }, AGENT_DEADLINE_S * 1000);
  }
  await setMicrophone(true);
}

ui.connect.addEventListener('click', async () => {
  if (room) {
    const r = room;
    ui.connect.disabled = true;
    await r.disconnect();
    teardown();
  } else {
    await connect();
  }
});

ui.startAudio.addEventListener('click', async () => {
  unlockAudio();
  if (room) await room.startAudio();
  ui.startAudio.hidden = !room || room.canPlaybackAudio;
});

refreshDevices();
