// vite.config.js: in development, the Vite server passes /ws (and
// /ws/client.js) on to Sanic, so the page and the socket share one origin.
import { sveltekit } from "@sveltejs/kit/vite";
import { defineConfig } from "vite";

export default defineConfig({
  plugins: [sveltekit()],
  server: {
    proxy: {
      "/ws": { target: "http://127.0.0.1:8000", ws: true },
    },
  },
});
