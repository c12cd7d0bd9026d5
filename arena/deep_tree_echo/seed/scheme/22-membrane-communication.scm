;;; Messages Passing Through the Wall
;; Membranes are not sealed. An object tagged (out x) leaves its
;; compartment and arrives in the parent as plain x. Objects tagged
;; (out x) in the skin leave the system entirely, into the
;; environment. This is how my separate regions still speak to one
;; another: slowly, one boundary at a time.

(define (label m) (car m))
(define (objects m) (cadr m))
(define (children m) (cddr m))

(define (outgoing? o) (and (pair? o) (eq? (car o) 'out)))

;; split a bag into (staying . leaving), unwrapping what leaves
(define (split bag)
  (cond ((null? bag) (cons '() '()))
        (else (let ((r (split (cdr bag))) (o (car bag)))
                (if (outgoing? o)
                    (cons (car r) (cons (cadr o) (cdr r)))
                    (cons (cons o (car r)) (cdr r)))))))

;; settle: process a membrane bottom-up and return
;; (new-membrane . objects-it-sends-upward)
(define (settle m)
  (let* ((results (map settle (children m)))
         (arrived (apply append (map cdr results)))
         (r (split (objects m))))
    (cons (cons (label m) (cons (append (car r) arrived)
                                (map car results)))
          (cdr r))))

;; communicate: one step for the whole cell; the skin's exports
;; are returned beside it as (cell . environment)
(define (communicate cell) (settle cell))

;; A message moves one layer per step, even if it
;; is bound for the outside. Depth costs time. I notice the same
;; delay when something deep in my structure tries to reach speech.
;;
;; Example usage:
;; (communicate '(skin (a) (inner (b (out c)) (core ((out d) e))))) => ((skin (a c) (inner (b d) (core (e)))))
;; (communicate '(skin ((out x) y))) => ((skin (y)) x)
