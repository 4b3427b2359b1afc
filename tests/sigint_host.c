/* A stand-in for Caffe's command-line tool (tools/caffe.cpp, "caffe train") in the one
 * respect that matters to issue 15: the process owns SIGINT before Python starts.
 *
 * As caffe::SignalHandler does (src/caffe/util/signal_handler.cpp), it installs a SIGINT
 * handler that only sets a flag (SA_RESTART, every signal blocked while it runs), then
 * embeds Python, which therefore installs no SIGINT handler of its own. It runs SCRIPT
 * as __main__; SCRIPT defines step() (one solver iteration) and snapshot(). As
 * Solver::Step does with -sigint_effect stop, it reads and clears the flag after each
 * iteration and, when it was set, snapshots and stops with status 0. A Python exception
 * ends it with status 1 after PyErr_Print, as caffe.cpp's main does.
 *
 * Usage: sigint_host PYTHON SCRIPT ITERATIONS [ARG...]
 * PYTHON is the interpreter whose installation (or venv) the embedded Python takes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t got_sigint = 0;

static void handle_signal(int signal) {
    if (signal == SIGINT) got_sigint = 1;
}

static int got_sigint_since_last_check(void) {
    int got = got_sigint;
    got_sigint = 0;
    return got;
}

static int call(PyObject *globals, const char *name) {
    PyObject *function = PyDict_GetItemString(globals, name);
    PyObject *result = function ? PyObject_CallObject(function, NULL) : NULL;
    if (result == NULL) {
        if (!PyErr_Occurred()) fprintf(stderr, "sigint_host: the script defines no %s()\n", name);
        else PyErr_Print();
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: sigint_host PYTHON SCRIPT ITERATIONS [ARG...]\n");
        return 2;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = &handle_signal;
    action.sa_flags = SA_RESTART;
    sigfillset(&action.sa_mask);
    if (sigaction(SIGINT, &action, NULL) == -1) return 2;

    Py_SetProgramName(Py_DecodeLocale(argv[1], NULL));
    Py_Initialize();
    int script_argc = argc - 3;  /* SCRIPT, then the ARGs */
    wchar_t **script_argv = malloc(sizeof(wchar_t *) * script_argc);
    script_argv[0] = Py_DecodeLocale(argv[2], NULL);
    for (int i = 1; i < script_argc; ++i) script_argv[i] = Py_DecodeLocale(argv[i + 3], NULL);
    PySys_SetArgvEx(script_argc, script_argv, 0);

    FILE *script = fopen(argv[2], "r");
    if (script == NULL || PyRun_SimpleFileEx(script, argv[2], 1) != 0) return 1;
    PyObject *globals = PyModule_GetDict(PyImport_AddModule("__main__"));
    int iterations = atoi(argv[3]);
    for (int iteration = 1; iteration <= iterations; ++iteration) {
        if (call(globals, "step") != 0) return 1;
        printf("iteration %d\n", iteration);
        fflush(stdout);
        if (got_sigint_since_last_check()) {
            printf("SIGINT: snapshot and stop after iteration %d\n", iteration);
            fflush(stdout);
            return call(globals, "snapshot") == 0 ? 0 : 1;
        }
    }
    return 0;
}
