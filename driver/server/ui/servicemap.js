// The service map: identities as nodes, the flows between them as edges. It polls
// /v1/servicemap every second and changes only what changed, so a new drop turns its edge
// red in place; a click on an edge (or its row) lists that edge's recent flows.
"use strict";

const POLL_MS = 1000;
const RECENT_FLOWS = 20;
const state = { cy: null, selected: null, polls: 0 };

const STYLE = [
  {
    selector: "node",
    style: {
      label: "data(label)",
      "text-wrap": "wrap",
      "text-valign": "bottom",
      "text-margin-y": 4,
      "font-size": 11,
      "background-color": "#34495e",
      width: "mapData(containers, 0, 10, 18, 48)",
      height: "mapData(containers, 0, 10, 18, 48)",
    },
  },
  { selector: "node.reserved", style: { "background-color": "#95a5a6", shape: "round-rectangle" } },
  {
    selector: "edge",
    style: {
      label: "data(label)",
      "font-size": 10,
      "curve-style": "bezier",
      // room between the two directions of a pair, so their labels do not overlap
      "control-point-step-size": 70,
      "text-rotation": "autorotate",
      "target-arrow-shape": "triangle",
      "line-color": "#7f8c8d",
      "target-arrow-color": "#7f8c8d",
      "text-background-color": "#fff",
      "text-background-opacity": 0.85,
      width: 2,
    },
  },
  {
    selector: "edge.translated",
    style: { "line-color": "#2980b9", "target-arrow-color": "#2980b9" },
  },
  {
    selector: "edge.dropped",
    style: { "line-color": "#e02020", "target-arrow-color": "#e02020", color: "#e02020" },
  },
  { selector: "edge:selected", style: { width: 4 } },
];

function edgeLabel(e) {
  const parts = [];
  if (e.forwarded) parts.push(`fwd ${e.forwarded}`);
  if (e.translated) parts.push(`nat ${e.translated}`);
  if (e.dropped) parts.push(`drop ${e.dropped}`);
  // connections counted in the datapath above its rate limit, without a record each
  if (e.aggregated) parts.push(`${e.aggregated} aggregated`);
  return parts.join(" · ");
}

function edgeClasses(e) {
  if (e.dropped) return "dropped";
  return e.translated ? "translated" : "";
}

function nodeLabel(n) {
  const count = n.containers === 1 ? "1 container" : `${n.containers} containers`;
  return n.containers ? `${n.name}\n${count}` : n.name;
}

function apply(graph) {
  const cy = state.cy;
  const wanted = new Set();
  let added = false;
  cy.batch(() => {
    for (const n of graph.nodes) {
      const id = `n${n.id}`;
      const data = { id, identity: n.id, label: nodeLabel(n), containers: n.containers, labels: n.labels };
      wanted.add(id);
      const node = cy.getElementById(id);
      if (node.empty()) {
        cy.add({ group: "nodes", data, classes: n.id < 256 ? "reserved" : "" });
        added = true;
      } else {
        node.data(data);
      }
    }
    for (const e of graph.edges) {
      const id = `e${e.source}-${e.target}`;
      const data = { ...e, id, source: `n${e.source}`, target: `n${e.target}`, label: edgeLabel(e) };
      wanted.add(id);
      const edge = cy.getElementById(id);
      if (edge.empty()) {
        cy.add({ group: "edges", data, classes: edgeClasses(e) });
        added = true;
      } else {
        edge.data(data);
        edge.classes(edgeClasses(e));
      }
    }
    cy.elements().filter((el) => !wanted.has(el.id())).remove();
  });
  if (added) cy.layout(layoutFor(cy)).run();
}

// Clients above the services they reach when some identity only sends; when every one also
// receives (a drop back the other way is enough), breadthfirst would put them all in one row
// with their edges on top of each other, so a circle. Either way the same graph always comes
// out the same.
function layoutFor(cy) {
  const roots = cy.nodes().filter((n) => n.indegree(false) === 0);
  if (roots.empty()) return { name: "circle", padding: 60, spacingFactor: 1.2 };
  return { name: "breadthfirst", directed: true, roots, padding: 60, spacingFactor: 1.4 };
}

function names(graph) {
  return new Map(graph.nodes.map((n) => [n.id, n.name]));
}

function listEdges(graph) {
  const name = names(graph);
  const body = document.querySelector("#edges tbody");
  body.replaceChildren(
    ...graph.edges.map((e) => {
      const row = document.createElement("tr");
      row.dataset.edge = `e${e.source}-${e.target}`;
      row.dataset.source = e.source;
      row.dataset.target = e.target;
      row.className = [edgeClasses(e), state.selected === row.dataset.edge ? "selected" : ""].join(" ").trim();
      for (const text of [name.get(e.source), name.get(e.target), e.forwarded, e.translated, e.dropped]) {
        const cell = document.createElement("td");
        cell.textContent = String(text);
        row.append(cell);
      }
      row.title = Object.entries(e.reasons).map(([why, n]) => `${why}: ${n}`).join("\n");
      row.addEventListener("click", () => select(e.source, e.target));
      return row;
    }),
  );
}

function flowLine(f) {
  const when = new Date(f.time * 1000).toLocaleTimeString();
  const end = (x) => `${x.container || x.labels[0] || x.address}${x.port ? ":" + x.port : ""}`;
  let why = f.type === "drop" ? ` (${f.reason})` : "";
  if (f.service) why += ` via ${f.service}`;
  if (f.policy && f.policy.rules.length) why += ` by ${f.policy.rules.join(", ")}`;
  if (f.type === "end") why += ` ended: ${f.packets} packets, ${f.bytes} bytes`;
  if (f.type === "aggregated") why += ` (aggregated: ${f.count} connections)`;
  return `${when} ${end(f.source)} → ${end(f.destination)} ${f.protocol.toUpperCase()} ${f.verdict}${why}`;
}

async function showFlows() {
  const [source, target] = state.selected.slice(1).split("-");
  const query = `from-identity=${source}&to-identity=${target}&last=${RECENT_FLOWS}`;
  const response = await fetch(`/v1/flows?${query}`);
  if (!response.ok) return;
  const flows = await response.json();
  document.getElementById("flows").replaceChildren(
    ...flows.reverse().map((f) => {
      const item = document.createElement("li");
      item.className = f.verdict;
      item.textContent = flowLine(f);
      return item;
    }),
  );
}

function select(source, target) {
  state.selected = `e${source}-${target}`;
  state.cy.elements().unselect();
  state.cy.getElementById(state.selected).select();
  for (const row of document.querySelectorAll("#edges tbody tr")) {
    row.classList.toggle("selected", row.dataset.edge === state.selected);
  }
  const name = (id) => state.cy.getElementById(`n${id}`).data("label").split("\n")[0];
  document.getElementById("flows-title").textContent = `Recent flows ${name(source)} → ${name(target)}`;
  showFlows();
}

function setStatus(text, error) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(error));
}

async function refresh() {
  try {
    const response = await fetch("/v1/servicemap");
    const body = await response.json();
    if (!response.ok) {
      setStatus(body.Err || `HTTP ${response.status}`, true);
      return;
    }
    apply(body);
    listEdges(body);
    if (state.selected) await showFlows();
    state.polls += 1;
    setStatus(`${body.nodes.length} identities, ${body.edges.length} edges, updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    setStatus(`cannot reach the driver: ${error}`, true);
  }
}

function start() {
  if (typeof cytoscape !== "function") {
    setStatus("cytoscape.js is missing (/ui/vendor/cytoscape.min.js): run scripts/setup-host.sh", true);
    return;
  }
  state.cy = cytoscape({
    container: document.getElementById("graph"),
    style: STYLE,
    maxZoom: 1.5, // a map of a few identities would otherwise fill the screen
    wheelSensitivity: 0.3,
  });
  state.cy.on("tap", "edge", (event) => {
    const e = event.target.data();
    select(e.source.slice(1), e.target.slice(1));
  });
  window.serviceMap = state;
  refresh();
  setInterval(refresh, POLL_MS);
}

start();
