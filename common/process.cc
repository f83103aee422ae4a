#include "common/process.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <mutex>
#include <thread>
#include <utility>

namespace quant {
namespace {

pthread_t signal_thread;
std::atomic<bool> signal_thread_ready{false};

void ForwardSignal(int signal) {
  if (signal_thread_ready.load()) pthread_kill(signal_thread, signal);
}

sigset_t StopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  return signals;
}

}  // namespace

void LogLine(absl::string_view program, const std::string& line) {
  static std::mutex mu;
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::tm tm;
  ::gmtime_r(&now, &tm);
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::lock_guard<std::mutex> lock(mu);
  std::cerr << stamp << " " << program << ": " << line << std::endl;
}

void BlockStopSignals() {
  const sigset_t signals = StopSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
}

void OnStopSignal(std::function<void(int signal)> stop) {
  // Detached: it waits for signals for the life of the process.
  std::thread watcher([stop = std::move(stop)] {
    const sigset_t signals = StopSignals();
    int received = 0;
    for (int count = 0;; ++count) {
      if (sigwait(&signals, &received) != 0) continue;
      if (count > 0) {
        std::cerr.flush();
        std::_Exit(130);
      }
      stop(received);
    }
  });
  signal_thread = watcher.native_handle();
  signal_thread_ready.store(true);
  watcher.detach();
  struct sigaction action = {};
  action.sa_handler = ForwardSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
}

}  // namespace quant
